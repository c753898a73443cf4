//! The domain's named values (integrations, states, results, reasons) as TEXT
//! columns on either backend: written by their names, and read back parsed,
//! so a name the code does not know is a decoding error, never a silent default.

use sqlx::database::Database;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Decode, Encode, Type};

use crate::domain::{AttemptResult, IntegrationKind, MessageState, Reason, UndeliverableReason};

macro_rules! text_column {
    ($($name:ty),+ $(,)?) => {$(
        impl<DB: Database> Type<DB> for $name
        where
            str: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $name
        where
            &'q str: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <&'q str as Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $name
        where
            &'r str: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let name = <&'r str as Decode<'r, DB>>::decode(value)?;
                Ok(name.parse::<$name>()?)
            }
        }
    )+};
}

text_column!(
    IntegrationKind,
    MessageState,
    AttemptResult,
    Reason,
    UndeliverableReason
);
