"""Checks notimeter's OpenAPI document with a real validator, and real
answers against the schemas it gives for them.

    python3 tests/tools/openapi_check.py SPEC.json SAMPLES.json

SAMPLES.json is a list of {"method", "path", "status", "body"}: `path` is the
document's path template (/v1/users/{user_id}/messages), `body` the JSON the
service answered. Needs PyPI's openapi-spec-validator (and its jsonschema).
"""

import json
import sys

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate


def pointer(*parts):
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def main(spec_path, samples_path):
    spec = json.load(open(spec_path))
    validate(spec)  # raises on an invalid OpenAPI 3.1 document
    problems = []
    for s in json.load(open(samples_path)):
        method, path, status = s["method"].lower(), s["path"], str(s["status"])
        op = spec["paths"].get(path, {}).get(method)
        if op is None:
            problems.append(f"{method.upper()} {path}: not in the document")
            continue
        response = op["responses"].get(status)
        if response is None:
            problems.append(f"{method.upper()} {path}: answered {status}, which the document does not list")
            continue
        if s.get("body") is None:
            continue  # not JSON: the status is listed, that is all
        content = response.get("content", {}).get("application/json")
        if content is None:
            problems.append(f"{method.upper()} {path} {status}: answered JSON, documented without")
            continue
        if "schema" not in content:
            continue  # documented as JSON of no fixed shape (this document itself)
        # The response's schema, resolved within the whole document.
        root = {
            "$ref": pointer("paths", path, method, "responses", status, "content", "application/json", "schema"),
            "paths": spec["paths"],
            "components": spec.get("components", {}),
        }
        for error in Draft202012Validator(root).iter_errors(s["body"]):
            problems.append(f"{method.upper()} {path} {status}: {error.message} at {list(error.absolute_path)}")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"valid OpenAPI {spec['openapi']}; answers match their schemas")


if __name__ == "__main__":
    main(*sys.argv[1:])
