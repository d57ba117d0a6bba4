//! The token parser (`domain::TokenValue::parse`) on arbitrary text: it never
//! panics, and what it accepts is exactly what was presented, with its parts
//! where the format puts them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokend::domain::{
    TokenValue,
    token_value::{CHECKSUM_LEN, ID_LEN, MAX_TOKEN_BYTES, SECRET_LEN},
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(value) = TokenValue::parse(&text) else {
        return;
    };
    assert!(text.len() <= MAX_TOKEN_BYTES);
    assert_eq!(value.expose(), text);
    assert_eq!(value.text_len(), text.len());
    let prefix_len = text.len() - (1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
    let id_start = prefix_len + 1;
    assert_eq!(value.id().as_str(), &text[id_start..id_start + ID_LEN]);
    assert_eq!(value.id_and_secret(), &text.as_bytes()[id_start..text.len() - CHECKSUM_LEN]);
    assert_eq!(value.secret(), &text[id_start + ID_LEN + 1..text.len() - CHECKSUM_LEN]);
    assert!(!value.hint().contains(value.secret()));
    let again = TokenValue::parse(&value.expose()).ok();
    assert_eq!(again.map(|v| v.id()), Some(value.id()));
});
