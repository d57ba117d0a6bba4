//! The Validate request decoder (`api::wire::ValidateCall`) on arbitrary
//! bytes: it never panics, and it agrees with the generated
//! `pb::ValidateRequest` on what decodes, what the fields are and what the
//! message encodes back to, whether the body arrives in one buffer or two.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::{Message, bytes::Buf};
use tokend::{api::wire::ValidateCall, domain::TokenValue, pb};

fn same(call: &ValidateCall, message: &pb::ValidateRequest) {
    assert_eq!(call.required_modules(), message.required_modules.as_slice());
    match call.token() {
        Ok(value) => assert_eq!(value.expose(), message.token),
        Err(why) => assert_eq!(TokenValue::parse(&message.token).err(), Some(why)),
    }
    assert_eq!(call.encoded_len(), message.encoded_len());
    assert_eq!(call.encode_to_vec(), message.encode_to_vec());
}

fuzz_target!(|data: &[u8]| {
    let generated = pb::ValidateRequest::decode(data);
    let ours = ValidateCall::decode(data);
    match (&ours, &generated) {
        (Ok(call), Ok(message)) => same(call, message),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "hand codec says {}, prost says {}",
            ours.is_ok(),
            generated.is_ok()
        ),
    }
    // The same bytes in two buffers (the non-contiguous path), cut where the
    // first byte says.
    if let Some(&cut) = data.first() {
        let (head, tail) = data.split_at(usize::from(cut) % data.len());
        let split = ValidateCall::decode(head.chain(tail));
        match (&split, &generated) {
            (Ok(call), Ok(message)) => same(call, message),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "split at {}: hand codec says {}, prost says {}",
                head.len(),
                split.is_ok(),
                generated.is_ok()
            ),
        }
    }
});
