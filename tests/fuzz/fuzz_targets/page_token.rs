//! The page-token decoders (`domain::page::{TokenCursor, EventCursor}`) on
//! arbitrary text: they never panic, and a token they accept names a cursor
//! that encodes to a token decoding to the same cursor.
//!
//! Page tokens are base64 of a small text: the input is tried both as the
//! token itself and as the text inside it, so the fuzzer reaches the inner
//! parser without having to discover base64. The first 8 bytes, when there
//! are 8, are the filters' fingerprint the token must carry.

#![no_main]

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use tokend::domain::page::{EventCursor, TokenCursor, fingerprint};

fn check(token: &str, filters: u64) {
    if let Ok(cursor) = TokenCursor::decode("page_token", token, filters) {
        let again = TokenCursor::decode("page_token", &cursor.encode(filters), filters);
        assert_eq!(again.ok(), Some(cursor));
        assert!(TokenCursor::decode("page_token", token, filters ^ 1).is_err());
    }
    if let Ok(cursor) = EventCursor::decode("page_token", token, filters) {
        let again = EventCursor::decode("page_token", &cursor.encode(filters), filters);
        assert_eq!(again.ok(), Some(cursor));
        assert!(EventCursor::decode("page_token", token, filters ^ 1).is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    let (filters, rest) = match data.split_first_chunk::<8>() {
        Some((fp, rest)) => (u64::from_le_bytes(*fp), rest),
        None => (fingerprint(""), data),
    };
    check(&String::from_utf8_lossy(rest), filters);
    check(&URL_SAFE_NO_PAD.encode(rest), filters);
});
