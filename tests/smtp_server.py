"""A real SMTP server for notimeter's tests (aiosmtpd, Debian's python3-aiosmtpd).

usage: smtp_server.py PORT DIR

Each accepted message is written to DIR as JSON: mail_from, rcpt_tos, data.
Recipients steer the answers, as a real server's would:
  reject@...          550 5.1.1 (permanent)
  tempfail@...        451 4.3.0 (transient), every time
  tempfail-once@...   451 4.3.0 the first time, then accepted
"""

import asyncio
import json
import os
import sys
import uuid

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, folder):
        self.folder = folder
        self.seen = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local == "reject":
            return "550 5.1.1 No such user here"
        if local == "tempfail":
            return "451 4.3.0 Try again later"
        if local == "tempfail-once" and address not in self.seen:
            self.seen.add(address)
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        }
        name = os.path.join(self.folder, uuid.uuid4().hex)
        with open(name + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name + ".json")
        return "250 Message accepted for delivery"


def main():
    port, folder = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Recorder(folder), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
