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

/// The canonical (18-character) form of a valid id, whichever form it came in: a 15-character id
/// gets its checksum suffix; an 18-character one keeps its first 15 characters (case-sensitive)
/// and gets its suffix in the canonical upper case. Both spellings of one record therefore map to
/// one string, which is what subjects, bodies, journal keys and the AddOrder marker use
/// (docs/contract.md §4).
pub fn canonical(id: &str) -> Result<String, InvalidId> {
    validate(id)?;
    Ok(to_18(&id[..15]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_of_one_record_are_one_canonical_id() {
        assert_eq!(
            canonical("001A000000lNcZA").as_deref(),
            Ok("001A000000lNcZAIA0")
        );
        assert_eq!(
            canonical("001A000000lNcZAIA0").as_deref(),
            Ok("001A000000lNcZAIA0")
        );
        // The suffix is case-insensitive; its canonical spelling is upper case.
        assert_eq!(
            canonical("001A000000lNcZAia0").as_deref(),
            Ok("001A000000lNcZAIA0")
        );
        assert_eq!(canonical("001A000000lNcZAIA1"), Err(InvalidId::Checksum));
        assert_eq!(canonical("short"), Err(InvalidId::Length(5)));
    }

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
