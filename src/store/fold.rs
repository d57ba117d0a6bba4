//! The case folding of name search: one function that SQLite's FTS5 trigram
//! index, the SQLite per-row check, PostgreSQL's `tokend_fold()` and the
//! query text all agree on, so both backends find exactly the same tokens.
//!
//! A name matches a query when `fold(name)` contains `fold(query)`, where
//! `fold` maps each character on its own through Unicode simple case folding
//! (as of Unicode 6.1; the BMP and Deseret). It is a port of
//! `sqlite3Fts5UnicodeFold(c, 0)` from the SQLite sources (public domain),
//! the folding FTS5's `trigram` tokenizer applies with `case_sensitive 0`
//! (plus SQLite's reading of U+FFFE and U+FFFF as U+FFFD);
//! `tests::matches_the_bundled_sqlite` checks it against the SQLite that is
//! linked in, character by character. A 1:1 mapping, so a fold never changes
//! a string's length in characters: `Straße` folds to `straße`, `ΣΑΣ` to
//! `σασ`, and `ς` to `σ`.

use std::{collections::HashMap, sync::LazyLock};

/// Folds one character (see the module docs).
pub fn fold(c: char) -> char {
    let code = u32::from(c);
    let folded = if code < 128 {
        if c.is_ascii_uppercase() {
            code + 32
        } else {
            code
        }
    } else if code < 0xFFFE {
        // The last entry starting at or before `code`.
        let i = ENTRIES.partition_point(|&(start, _, _)| u32::from(start) <= code);
        match i.checked_sub(1).map(|i| ENTRIES[i]) {
            Some((start, flags, len))
                if code < u32::from(start) + u32::from(len)
                    && (u32::from(flags) & 1 & (u32::from(start) ^ code)) == 0 =>
            {
                (code + u32::from(OFFSETS[usize::from(flags >> 1)])) & 0xFFFF
            }
            _ => code,
        }
    } else if (66560..66600).contains(&code) {
        code + 40
    } else if code == 0xFFFE || code == 0xFFFF {
        // SQLite reads these noncharacters as U+FFFD (sqlite3Utf8Read).
        0xFFFD
    } else {
        code
    };
    char::from_u32(folded).unwrap_or(c)
}

/// `fold` applied to every character of `s`.
pub fn fold_str(s: &str) -> String {
    s.chars().map(fold).collect()
}

/// Every character that folds to `folded` (itself included), for patterns
/// that must match any case of a character.
fn same_fold(folded: char) -> &'static [char] {
    static CLASSES: LazyLock<HashMap<char, Vec<char>>> = LazyLock::new(|| {
        let mut classes: HashMap<char, Vec<char>> = HashMap::new();
        for (c, f) in folding_pairs() {
            classes.entry(f).or_insert_with(|| vec![f]).push(c);
        }
        classes
    });
    CLASSES.get(&folded).map_or(&[], Vec::as_slice)
}

/// Every (character, its fold) pair where the two differ.
pub fn folding_pairs() -> impl Iterator<Item = (char, char)> {
    let ranges = ENTRIES
        .iter()
        .map(|&(start, _, len)| u32::from(start)..u32::from(start) + u32::from(len))
        .chain([0xFFFE..0x10000, 66560..66600]);
    ranges
        .flatten()
        .filter_map(char::from_u32)
        .map(|c| (c, fold(c)))
        .filter(|(c, f)| c != f)
}

/// A SQLite `GLOB` pattern matching exactly the names whose fold contains
/// `fold(query)`: each character becomes the class of all characters with
/// the same fold (`[sSſ]`), GLOB's own metacharacters are bracketed, so
/// nothing in the query acts as a wildcard.
pub fn sqlite_glob(query: &str) -> String {
    let mut out = String::with_capacity(query.len() * 3 + 2);
    out.push('*');
    for c in query.chars() {
        let f = fold(c);
        match same_fold(f) {
            [] | [_] => match f {
                '*' | '?' | '[' => {
                    out.push('[');
                    out.push(f);
                    out.push(']');
                }
                _ => out.push(f),
            },
            class => {
                out.push('[');
                out.extend(class.iter());
                out.push(']');
            }
        }
    }
    out.push('*');
    out
}

/// The `translate()` arguments of PostgreSQL's `tokend_fold()`: every
/// non-ASCII character that folds, and its fold (ASCII is folded by
/// `lower(... COLLATE "C")` first).
pub fn pg_translate_args() -> (String, String) {
    folding_pairs().filter(|(c, _)| !c.is_ascii()).unzip()
}

// From sqlite3Fts5UnicodeFold (fts5_unicode2.c): each entry folds `len` code
// points from `start` (only every second one when bit 0 of `flags` is set)
// by adding OFFSETS[flags >> 1], modulo 2^16.
const ENTRIES: [(u16, u8, u8); 163] = [
    (65, 14, 26),
    (181, 64, 1),
    (192, 14, 23),
    (216, 14, 7),
    (256, 1, 48),
    (306, 1, 6),
    (313, 1, 16),
    (330, 1, 46),
    (376, 116, 1),
    (377, 1, 6),
    (383, 104, 1),
    (385, 50, 1),
    (386, 1, 4),
    (390, 44, 1),
    (391, 0, 1),
    (393, 42, 2),
    (395, 0, 1),
    (398, 32, 1),
    (399, 38, 1),
    (400, 40, 1),
    (401, 0, 1),
    (403, 42, 1),
    (404, 46, 1),
    (406, 52, 1),
    (407, 48, 1),
    (408, 0, 1),
    (412, 52, 1),
    (413, 54, 1),
    (415, 56, 1),
    (416, 1, 6),
    (422, 60, 1),
    (423, 0, 1),
    (425, 60, 1),
    (428, 0, 1),
    (430, 60, 1),
    (431, 0, 1),
    (433, 58, 2),
    (435, 1, 4),
    (439, 62, 1),
    (440, 0, 1),
    (444, 0, 1),
    (452, 2, 1),
    (453, 0, 1),
    (455, 2, 1),
    (456, 0, 1),
    (458, 2, 1),
    (459, 1, 18),
    (478, 1, 18),
    (497, 2, 1),
    (498, 1, 4),
    (502, 122, 1),
    (503, 134, 1),
    (504, 1, 40),
    (544, 110, 1),
    (546, 1, 18),
    (570, 70, 1),
    (571, 0, 1),
    (573, 108, 1),
    (574, 68, 1),
    (577, 0, 1),
    (579, 106, 1),
    (580, 28, 1),
    (581, 30, 1),
    (582, 1, 10),
    (837, 36, 1),
    (880, 1, 4),
    (886, 0, 1),
    (902, 18, 1),
    (904, 16, 3),
    (908, 26, 1),
    (910, 24, 2),
    (913, 14, 17),
    (931, 14, 9),
    (962, 0, 1),
    (975, 4, 1),
    (976, 140, 1),
    (977, 142, 1),
    (981, 146, 1),
    (982, 144, 1),
    (984, 1, 24),
    (1008, 136, 1),
    (1009, 138, 1),
    (1012, 130, 1),
    (1013, 128, 1),
    (1015, 0, 1),
    (1017, 152, 1),
    (1018, 0, 1),
    (1021, 110, 3),
    (1024, 34, 16),
    (1040, 14, 32),
    (1120, 1, 34),
    (1162, 1, 54),
    (1216, 6, 1),
    (1217, 1, 14),
    (1232, 1, 88),
    (1329, 22, 38),
    (4256, 66, 38),
    (4295, 66, 1),
    (4301, 66, 1),
    (7680, 1, 150),
    (7835, 132, 1),
    (7838, 96, 1),
    (7840, 1, 96),
    (7944, 150, 8),
    (7960, 150, 6),
    (7976, 150, 8),
    (7992, 150, 8),
    (8008, 150, 6),
    (8025, 151, 8),
    (8040, 150, 8),
    (8072, 150, 8),
    (8088, 150, 8),
    (8104, 150, 8),
    (8120, 150, 2),
    (8122, 126, 2),
    (8124, 148, 1),
    (8126, 100, 1),
    (8136, 124, 4),
    (8140, 148, 1),
    (8152, 150, 2),
    (8154, 120, 2),
    (8168, 150, 2),
    (8170, 118, 2),
    (8172, 152, 1),
    (8184, 112, 2),
    (8186, 114, 2),
    (8188, 148, 1),
    (8486, 98, 1),
    (8490, 92, 1),
    (8491, 94, 1),
    (8498, 12, 1),
    (8544, 8, 16),
    (8579, 0, 1),
    (9398, 10, 26),
    (11264, 22, 47),
    (11360, 0, 1),
    (11362, 88, 1),
    (11363, 102, 1),
    (11364, 90, 1),
    (11367, 1, 6),
    (11373, 84, 1),
    (11374, 86, 1),
    (11375, 80, 1),
    (11376, 82, 1),
    (11378, 0, 1),
    (11381, 0, 1),
    (11390, 78, 2),
    (11392, 1, 100),
    (11499, 1, 4),
    (11506, 0, 1),
    (42560, 1, 46),
    (42624, 1, 24),
    (42786, 1, 14),
    (42802, 1, 62),
    (42873, 1, 4),
    (42877, 76, 1),
    (42878, 1, 10),
    (42891, 0, 1),
    (42893, 74, 1),
    (42896, 1, 4),
    (42912, 1, 10),
    (42922, 72, 1),
    (65313, 14, 26),
];
const OFFSETS: [u16; 77] = [
    1, 2, 8, 15, 16, 26, 28, 32, 37, 38, 40, 48, 63, 64, 69, 71, 79, 80, 116, 202, 203, 205, 206,
    207, 209, 210, 211, 213, 214, 217, 218, 219, 775, 7264, 10792, 10795, 23228, 23256, 30204,
    54721, 54753, 54754, 54756, 54787, 54793, 54809, 57153, 57274, 57921, 58019, 58363, 61722,
    65268, 65341, 65373, 65406, 65408, 65410, 65415, 65424, 65436, 65439, 65450, 65462, 65472,
    65476, 65478, 65480, 65482, 65488, 65506, 65511, 65514, 65521, 65527, 65528, 65529,
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn folds_like_unicode_simple_case_folding() {
        assert_eq!(fold_str("Ünïcode Straße"), "ünïcode straße");
        assert_eq!(fold_str("STRAẞE"), "straße");
        assert_eq!(fold_str("ΟΔΟΣ οδος"), "οδοσ οδοσ");
        assert_eq!(fold_str("K ſ Ж 中 İ"), "k s ж 中 İ");
        assert_eq!(fold_str("100%_\\"), "100%_\\");
        // Idempotent, and a fold never folds again.
        for (_, f) in folding_pairs() {
            assert_eq!(fold(f), f);
        }
        assert!(folding_pairs().count() > 1000);
    }

    #[test]
    fn glob_patterns_take_the_query_literally() {
        assert_eq!(sqlite_glob("Ab*"), "*[aA][bB][*]*");
        assert_eq!(sqlite_glob("s?[x]"), "*[sSſ][?][[][xX]]*");
        assert_eq!(sqlite_glob("ß1-^"), "*[ßẞ]1-^*");
        // No class holds a character that means something inside brackets.
        for (c, f) in folding_pairs() {
            assert!(!"]-^!".contains(c) && !"]-^!".contains(f));
        }
    }

    #[test]
    fn pg_translate_covers_non_ascii_only() {
        let (from, to) = pg_translate_args();
        assert_eq!(from.chars().count(), to.chars().count());
        assert!(from.chars().all(|c| !c.is_ascii()));
        assert!(from.contains('Ü') && from.contains('ẞ') && from.contains('\u{212A}'));
    }

    /// The port is exact: for every character of the BMP and of the
    /// supplementary blocks that have case, the bundled SQLite's FTS5
    /// trigram tokenizer folds it to what `fold` says. Also proves that the
    /// bundled SQLite has FTS5 and a trigram tokenizer (3.34+).
    #[tokio::test]
    async fn matches_the_bundled_sqlite() {
        use sea_orm::sqlx::{Connection, Row, SqliteConnection};
        let mut db = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let version: String = sea_orm::sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
        assert!(
            parts[0] == 3 && parts[1] >= 34,
            "SQLite {version} has no trigram tokenizer"
        );
        sea_orm::sqlx::raw_sql(
            "CREATE VIRTUAL TABLE probe USING fts5(x, tokenize = 'trigram'); \
             CREATE VIRTUAL TABLE probe_terms USING fts5vocab(probe, 'instance');",
        )
        .execute(&mut db)
        .await
        .unwrap();
        let codes: Vec<u32> = (1..0x10000)
            .chain(0x10400..0x10500)
            .chain(0x10C80..0x10D00)
            .chain(0x118A0..0x11900)
            .chain(0x16E40..0x16EA0)
            .chain(0x1E900..0x1E960)
            .filter(|c| char::from_u32(*c).is_some())
            .collect();
        let mut tx = db.begin().await.unwrap();
        for chunk in codes.chunks(500) {
            let mut sql = String::from("INSERT INTO probe (rowid, x) VALUES ");
            for (i, code) in chunk.iter().enumerate() {
                let c = char::from_u32(*code).unwrap();
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "({code}, '{}')",
                    c.to_string().repeat(3).replace('\'', "''")
                ));
            }
            sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let rows = sea_orm::sqlx::query("SELECT doc, term FROM probe_terms")
            .fetch_all(&mut db)
            .await
            .unwrap();
        let mut seen = 0;
        for row in rows {
            let code: i64 = row.get(0);
            let term: String = row.get(1);
            let c = char::from_u32(u32::try_from(code).unwrap()).unwrap();
            assert_eq!(term, fold(c).to_string().repeat(3), "U+{code:04X}");
            seen += 1;
        }
        assert_eq!(seen, codes.len());
    }
}
