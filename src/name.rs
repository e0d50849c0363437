//! Model names as people write them: printable Unicode with spaces, stored NFC-normalised, up
//! to 255 characters (the guide's `VARCHAR(255)`).
//!
//! Characters, not bytes: a name is at most [`MAX_NAME_CHARS`] Unicode scalar values after NFC
//! normalisation (so up to 1,020 bytes of UTF-8), which is what `length()` counts in both SQLite
//! and PostgreSQL, and what the migrations' CHECK constraints enforce.

use std::borrow::Cow;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::{Error, Result};

/// The name `active` is reserved (in any letter case): it always means the active model.
pub const ACTIVE_ALIAS: &str = "active";

/// The longest name, in characters after NFC normalisation.
pub const MAX_NAME_CHARS: usize = 255;

/// `name` in NFC; borrowed when it already is (the common case, checked without allocating).
pub fn nfc(name: &str) -> Cow<'_, str> {
    match is_nfc_quick(name.chars()) {
        IsNormalized::Yes => Cow::Borrowed(name),
        _ => {
            let normalised: String = name.nfc().collect();
            if normalised == name {
                Cow::Borrowed(name)
            } else {
                Cow::Owned(normalised)
            }
        }
    }
}

/// `text` (a name, a path) in double quotes for messages and logs, escaping only `"` and `\`.
/// `{:?}` would escape combining marks too (`"नमस्ते"` as `"नमस\u{94d}त\u{947}"`), and names
/// hold printable characters only.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// What a name looks like, for telling confusable names apart: its NFKC form, where a
/// full-width `ｄｉｇｉｔｓ` and a ligature `ﬁ` become the letters they show.
pub fn look(name: &str) -> String {
    name.nfkc().collect()
}

/// The names among `names` that `typed` is probably a typo of, the closest ones (at most three):
/// compared case-insensitively, by edit distance scaled to the name's length.
pub fn closest<'a>(typed: &str, names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let want = typed.to_lowercase();
    // One edit in a short name, about one in four in a long one.
    let allowed = (want.chars().count() / 4).clamp(1, 4);
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            let d = strsim::damerau_levenshtein(&want, &n.to_lowercase());
            (d <= allowed && n != typed).then_some((d, n))
        })
        .collect();
    scored.sort_by_key(|(d, n)| (*d, n.len()));
    // Only the closest: "digts_v2" is one edit from digits_v2, two from digits_v1.
    let best = scored.first().map_or(0, |(d, _)| *d);
    scored
        .into_iter()
        .take_while(|(d, _)| *d == best)
        .take(3)
        .map(|(_, n)| n)
        .collect()
}

/// Whether `name` asks for the active model: empty or the alias `active` (exactly; a name in
/// another case is simply not registrable).
pub fn is_active_alias(name: &str) -> bool {
    name.is_empty() || name == ACTIVE_ALIAS
}

/// Refuses a looked-up name holding a NUL byte (`what`: "model", "deployment"): no stored name
/// has one, and PostgreSQL's text cannot hold it (its error would carry the driver's words).
///
/// # Errors
/// `InvalidArgument` saying so.
pub fn refuse_nul(name: &str, what: &str) -> Result<()> {
    if name.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "the {what} name holds a NUL byte (U+0000); no {what} has one"
        )));
    }
    Ok(())
}

/// Checks a new model name and returns it NFC-normalised, the form stored and compared.
///
/// # Errors
/// `InvalidArgument` saying what is wrong: empty, too long, leading or trailing whitespace, a
/// control, format (zero-width), separator, private-use or unassigned character, or the
/// reserved alias.
pub fn normalise_name(raw: &str) -> Result<String> {
    normalise(raw, "model name")
}

/// [`normalise_name`] for a deployment's name: the same rules (deployments and models share
/// one namespace).
///
/// # Errors
/// As [`normalise_name`].
pub fn normalise_deployment_name(raw: &str) -> Result<String> {
    normalise(raw, "deployment name")
}

fn normalise(raw: &str, what: &str) -> Result<String> {
    let name = nfc(raw).into_owned();
    let shown = || format!("{raw:?}");
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("the {what} is empty")));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(Error::InvalidArgument(format!(
            "{what} is {chars} characters long; at most {MAX_NAME_CHARS} are allowed"
        )));
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(Error::InvalidArgument(format!(
            "{what} {} starts or ends with whitespace; remove it",
            shown()
        )));
    }
    if let Some((i, c, kind)) = name
        .chars()
        .enumerate()
        .find_map(|(i, c)| refused(c).map(|w| (i, c, w)))
    {
        return Err(Error::InvalidArgument(format!(
            "{what} {} has {kind} U+{:04X} at character {}; names hold printable characters and spaces only",
            shown(),
            u32::from(c),
            i + 1
        )));
    }
    if name.to_lowercase() == ACTIVE_ALIAS {
        return Err(Error::InvalidArgument(format!(
            "{what} {} is reserved (in any letter case): {ACTIVE_ALIAS:?} always means the active model",
            shown()
        )));
    }
    Ok(name)
}

/// Characters that print as nothing although their category is not "format": the combining
/// grapheme joiner, the Hangul fillers, the blank Braille pattern, Khmer's invisible vowels.
const INVISIBLE: [char; 8] = [
    '\u{034F}', '\u{115F}', '\u{1160}', '\u{17B4}', '\u{17B5}', '\u{2800}', '\u{3164}', '\u{FFA0}',
];

/// Why a character cannot be part of a name, if it cannot.
fn refused(c: char) -> Option<&'static str> {
    if INVISIBLE.contains(&c) {
        return Some("the invisible character");
    }
    Some(match c.general_category() {
        GeneralCategory::Control => "the control character",
        GeneralCategory::Format => "the invisible format (zero-width) character",
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => "the line separator",
        GeneralCategory::PrivateUse => "the private-use character",
        GeneralCategory::Surrogate | GeneralCategory::Unassigned => "the unassigned character",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_people_write_them_are_accepted() {
        for ok in [
            "digits_v1",
            "YAMNet Human Detection v1",
            "Détecteur de détresse",
            "音声検出モデル 第2版",
            "'; DROP TABLE ml_models; --",
            "emoji 🚀 model",
            "a",
            "Active model",
        ] {
            assert_eq!(normalise_name(ok).unwrap(), ok);
        }
    }

    #[test]
    fn quoting_keeps_the_characters_people_wrote() {
        assert_eq!(quoted("नमस्ते"), "\"नमस्ते\"");
        assert_eq!(quoted("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
    }

    #[test]
    fn a_typo_finds_the_names_it_is_close_to() {
        let names = ["digits_v1", "digits_v2", "cnn", "YAMNet Human Detection v1"];
        assert_eq!(closest("digts_v2", names.into_iter()), ["digits_v2"]);
        assert_eq!(closest("digits_v3", names.into_iter()), ["digits_v1", "digits_v2"]);
        assert_eq!(
            closest("yamnet human detection v1", names.into_iter()),
            ["YAMNet Human Detection v1"]
        );
        assert!(closest("resnet50", names.into_iter()).is_empty());
        assert!(closest("cn", names.into_iter()) == ["cnn"]);
    }

    #[test]
    fn names_are_stored_nfc() {
        // "é" as e + combining acute becomes the one precomposed character.
        let decomposed = "Mode\u{301}le";
        assert_eq!(normalise_name(decomposed).unwrap(), "Mod\u{e9}le");
        assert_eq!(nfc(decomposed), "Mod\u{e9}le");
        assert!(matches!(nfc("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_limit_is_255_characters_not_bytes() {
        let at_limit = "é".repeat(255);
        assert_eq!(at_limit.len(), 510, "two bytes a character");
        assert!(normalise_name(&at_limit).is_ok());
        // 255 characters after NFC, although 510 before it.
        assert!(normalise_name(&"e\u{301}".repeat(255)).is_ok());
        let err = normalise_name(&"é".repeat(256)).unwrap_err().to_string();
        assert!(err.contains("256 characters") && err.contains("at most 255"), "{err}");
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            (" lead", "whitespace"),
            ("trail ", "whitespace"),
            ("tab\tinside", "control character U+0009"),
            ("new\nline", "control character U+000A"),
            ("zero\u{200b}width", "format (zero-width) character U+200B"),
            ("bom\u{feff}", "format (zero-width) character U+FEFF"),
            ("joiner\u{200d}x", "U+200D"),
            ("rtl\u{202e}override", "U+202E"),
            ("line\u{2028}sep", "line separator U+2028"),
            ("private\u{e000}", "private-use"),
            ("filler\u{3164}", "invisible character U+3164"),
            ("cgj\u{34f}x", "invisible character U+034F"),
            ("active", "reserved"),
            ("ACTIVE", "reserved"),
            ("Active", "reserved"),
        ] {
            match normalise_name(bad) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(why), "{bad:?}: {m}"),
                other => panic!("{bad:?} must be refused, got {other:?}"),
            }
        }
    }
}
