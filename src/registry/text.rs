//! The free-text fields a client may write into the registry, and their limits (the guide's
//! column sizes where it gives them). Checked before any SQL runs, so SQLite and PostgreSQL
//! refuse alike (PostgreSQL cannot store a NUL byte; SQLite would) and with the field's name.

use crate::error::{Error, Result};

/// `version`: the guide's `VARCHAR(50)`.
pub const VERSION: Limit = Limit("version", 50);
/// `file_path`: a path under the model root or an object URL.
pub const FILE_PATH: Limit = Limit("file_path", 1024);
/// `description`.
pub const DESCRIPTION: Limit = Limit("description", 10_000);
/// `model_type`: the guide's `VARCHAR(100)`.
pub const MODEL_TYPE: Limit = Limit("model_type", 100);
/// Who made a change (`created_by`, `activated_by`, `changed_by`, `evaluated_by`).
pub const WHO: Limit = Limit("by", 255);
/// Why a change was made (`reason`).
pub const REASON: Limit = Limit("reason", 1000);
/// An evaluation's `notes`.
pub const NOTES: Limit = Limit("notes", 10_000);
/// `min_app_version` and the per-platform versions.
pub const APP_VERSION: Limit = Limit("min_app_version", 50);

/// The most characters of a request field, by the field's name (the REST API's schemas state
/// them from here).
pub fn max_chars(field: &str) -> Option<usize> {
    Some(match field {
        "version" => VERSION.1,
        "file_path" => FILE_PATH.1,
        "description" => DESCRIPTION.1,
        "model_type" => MODEL_TYPE.1,
        "created_by" | "activated_by" | "changed_by" | "evaluated_by" => WHO.1,
        "reason" => REASON.1,
        "notes" => NOTES.1,
        "min_app_version" => APP_VERSION.1,
        "model_name" => crate::name::MAX_NAME_CHARS,
        _ => return None,
    })
}

/// A field's name and its most characters.
#[derive(Debug, Clone, Copy)]
pub struct Limit(pub &'static str, pub usize);

impl Limit {
    /// Refuses `value` when it holds a NUL byte or is longer than the limit.
    ///
    /// # Errors
    /// `InvalidArgument` naming the field.
    pub fn check(self, value: &str) -> Result<()> {
        check_field(self.0, value, self.1)
    }
}

/// Refuses `value` of `field` when it holds a NUL byte or has more than `max` characters.
///
/// # Errors
/// `InvalidArgument` naming the field.
pub fn check_field(field: &str, value: &str, max: usize) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{field} holds a NUL byte (U+0000), which the registry does not store"
        )));
    }
    if value.len() > max {
        let chars = value.chars().count();
        if chars > max {
            return Err(Error::InvalidArgument(format!(
                "{field} is {chars} characters long; at most {max} are allowed"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_and_long_values_are_refused_by_field() {
        assert!(VERSION.check("1.2.3").is_ok());
        assert!(VERSION.check(&"é".repeat(50)).is_ok(), "characters, not bytes");
        let long = VERSION.check(&"1".repeat(51)).unwrap_err().to_string();
        assert!(long.contains("version is 51 characters long; at most 50"), "{long}");
        let nul = DESCRIPTION.check("a\0b").unwrap_err().to_string();
        assert!(nul.starts_with("description holds a NUL byte"), "{nul}");
    }
}
