//! Salesforce record ids: 15 characters (case-sensitive) or 18 (with a case-insensitive
//! checksum suffix). Validated before an id goes near a subject or a SOQL query.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidId {
    #[error("a Salesforce id has 15 or 18 characters, this one has {0}")]
    Length(usize),
    #[error("a Salesforce id holds only ASCII letters and digits")]
    Characters,
    #[error("the 18-character id's checksum suffix does not match its first 15 characters")]
    Checksum,
}

/// Checks the shape (and, for 18-character ids, the checksum) of a Salesforce id.
pub fn validate(id: &str) -> Result<(), InvalidId> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(InvalidId::Characters);
    }
    match id.len() {
        15 => Ok(()),
        18 => {
            if checksum(&id[..15]).eq_ignore_ascii_case(&id[15..]) {
                Ok(())
            } else {
                Err(InvalidId::Checksum)
            }
        }
        n => Err(InvalidId::Length(n)),
    }
}

/// The 3-character suffix that turns a 15-character id into its 18-character form: one bit per
/// character (set when upper case), five bits per chunk, mapped onto `A-Z0-5`.
pub fn checksum(id15: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            ALPHABET[bits] as char
        })
        .collect()
}

/// The 18-character form of a valid 15-character id.
pub fn to_18(id15: &str) -> String {
    format!("{id15}{}", checksum(id15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_validate() {
        // A well-known pair from Salesforce documentation.
        assert_eq!(to_18("001A000000lNcZA"), "001A000000lNcZAIA0");
        assert_eq!(validate("001A000000lNcZAIA0"), Ok(()));
        assert_eq!(validate("001A000000lNcZA"), Ok(()));
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert_eq!(validate("001A000000lNcZAIA1"), Err(InvalidId::Checksum));
        assert_eq!(validate("abc"), Err(InvalidId::Length(3)));
        assert_eq!(validate("001A000000lNcZ'"), Err(InvalidId::Characters));
        assert_eq!(validate("801' OR Id != '"), Err(InvalidId::Characters));
    }
}
