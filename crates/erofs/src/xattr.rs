//! Extended attributes stored inline in the inode (`erofs_xattr_ibody_header` + entries).
//!
//! erofs stores an xattr name as a one-byte namespace index plus the rest of the name. The writer knows the
//! kernel's short prefixes (`user.`, `trusted.`, `security.`, and the two POSIX ACL names); names in other
//! namespaces are refused, since without the long-prefix feature the kernel could not list or read them.
//! Shared xattrs (one copy referenced by many inodes) are not written: every inode carries its own.

use crate::format::{put_u16, XATTR_ENTRY_HEADER_SIZE, XATTR_IBODY_HEADER_SIZE};

/// Largest value the on-disk `e_value_size` (16 bits) can describe.
pub const VALUE_MAX: usize = u16::MAX as usize;

/// Why an xattr cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrProblem {
    /// The name is in no namespace erofs has an index for.
    UnsupportedNamespace,
    /// The name is only a namespace prefix (`user.`).
    EmptyName,
    /// The name after the prefix is longer than 255 bytes.
    NameTooLong,
    /// The value is longer than 65535 bytes.
    ValueTooLong,
    /// The name contains a NUL byte.
    NulInName,
    /// The entry lists the name twice.
    Duplicate,
}

impl std::fmt::Display for XattrProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnsupportedNamespace => {
                "not in a namespace erofs indexes (user., trusted., security., system.posix_acl_*)"
            }
            Self::EmptyName => "empty name after the namespace prefix",
            Self::NameTooLong => "name longer than 255 bytes after the namespace prefix",
            Self::ValueTooLong => "value longer than 65535 bytes",
            Self::NulInName => "NUL byte in the name",
            Self::Duplicate => "listed twice",
        })
    }
}

/// The namespace index and the stored remainder of `name`.
pub fn split_name(name: &[u8]) -> Result<(u8, &[u8]), XattrProblem> {
    if name.contains(&0) {
        return Err(XattrProblem::NulInName);
    }
    // Whole names first: the ACL xattrs are stored with an empty remainder.
    const WHOLE: [(&[u8], u8); 2] = [
        (b"system.posix_acl_access", 2),
        (b"system.posix_acl_default", 3),
    ];
    if let Some(&(_, index)) = WHOLE.iter().find(|(whole, _)| *whole == name) {
        return Ok((index, b""));
    }
    const PREFIXES: [(&[u8], u8); 3] = [(b"user.", 1), (b"trusted.", 4), (b"security.", 6)];
    let (prefix, index) = PREFIXES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .ok_or(XattrProblem::UnsupportedNamespace)?;
    let rest = &name[prefix.len()..];
    if rest.is_empty() {
        return Err(XattrProblem::EmptyName);
    }
    if rest.len() > u8::MAX as usize {
        return Err(XattrProblem::NameTooLong);
    }
    Ok((*index, rest))
}

/// Checks one xattr without encoding it.
pub fn check(name: &[u8], value: &[u8]) -> Result<(), XattrProblem> {
    split_name(name)?;
    if value.len() > VALUE_MAX {
        return Err(XattrProblem::ValueTooLong);
    }
    Ok(())
}

/// The inline xattr body of an inode (header and 4-byte aligned entries) and its `i_xattr_icount`; empty and
/// zero without xattrs. `xattrs` must be checked ([`check`]); they are written in the order given.
pub fn encode_body<'a>(xattrs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> (Vec<u8>, u32) {
    let mut body = vec![0u8; XATTR_IBODY_HEADER_SIZE];
    // h_name_filter = 0 (no XATTR_FILTER feature), h_shared_count = 0.
    for (name, value) in xattrs {
        let (index, rest) =
            split_name(name).expect("xattr names are checked when entries are added");
        let start = body.len();
        body.resize(start + XATTR_ENTRY_HEADER_SIZE, 0);
        body[start] = rest.len() as u8;
        body[start + 1] = index;
        put_u16(&mut body, start + 2, value.len() as u16);
        body.extend_from_slice(rest);
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    if body.len() == XATTR_IBODY_HEADER_SIZE {
        // A header without entries is refused by the kernel ("xattr_isize 12 not supported"): write none.
        return (Vec::new(), 0);
    }
    let icount = 1 + (body.len() - XATTR_IBODY_HEADER_SIZE) as u32 / 4;
    (body, icount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_kernel_indexes() {
        assert_eq!(split_name(b"user.mime"), Ok((1, &b"mime"[..])));
        assert_eq!(
            split_name(b"trusted.overlay.opaque"),
            Ok((4, &b"overlay.opaque"[..]))
        );
        assert_eq!(
            split_name(b"security.capability"),
            Ok((6, &b"capability"[..]))
        );
        assert_eq!(split_name(b"system.posix_acl_access"), Ok((2, &b""[..])));
        assert_eq!(split_name(b"system.posix_acl_default"), Ok((3, &b""[..])));
        assert_eq!(
            split_name(b"system.other"),
            Err(XattrProblem::UnsupportedNamespace)
        );
        assert_eq!(split_name(b"user."), Err(XattrProblem::EmptyName));
        assert_eq!(
            split_name(b"usr.x"),
            Err(XattrProblem::UnsupportedNamespace)
        );
        assert_eq!(
            split_name(&[b"user.".as_slice(), &[b'a'; 256]].concat()),
            Err(XattrProblem::NameTooLong)
        );
        assert_eq!(
            check(b"user.a", &vec![0; VALUE_MAX + 1]),
            Err(XattrProblem::ValueTooLong)
        );
    }

    #[test]
    fn entries_are_padded_to_four_bytes_after_a_twelve_byte_header() {
        let (body, icount) = encode_body([
            (&b"user.ab"[..], &b"xyz"[..]),
            (b"trusted.overlay.opaque", b"y"),
        ]);
        // Header (12) + entry 1: 4 + 2 + 3 = 9 -> 12, entry 2: 4 + 14 + 1 = 19 -> 20.
        assert_eq!(body.len(), 12 + 12 + 20);
        assert_eq!(icount, 1 + (12 + 20) / 4);
        assert_eq!(
            &body[12..24],
            &[2, 1, 3, 0, b'a', b'b', b'x', b'y', b'z', 0, 0, 0]
        );
        assert_eq!(&body[24..28], &[14, 4, 1, 0]);
        assert_eq!(&body[28..43], b"overlay.opaquey");
        assert_eq!(&body[43..], &[0]);
        // The kernel's size formula gives back the body length.
        assert_eq!(12 + 4 * (icount as usize - 1), body.len());
    }

    #[test]
    fn no_xattrs_means_no_header() {
        assert_eq!(encode_body(std::iter::empty()), (Vec::new(), 0));
    }
}
