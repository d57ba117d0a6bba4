use super::{fts_phrase, like_literal};

#[test]
fn like_wildcards_are_escaped() {
    assert_eq!(like_literal("50%_off\\"), "50\\%\\_off\\\\");
    assert_eq!(like_literal("plain"), "plain");
}

#[test]
fn fts_phrases_quote_quotes() {
    assert_eq!(fts_phrase("a\"b*"), "\"a\"\"b*\"");
}
