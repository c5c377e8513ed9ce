//! Function ids in kernel BTF blobs, vmlinux's or a module's split BTF
//! (whose ids and strings continue vmlinux's): what loading an fentry
//! program on a function takes.

use super::{record_extra, sections, u32_at, BtfError, KIND_FUNC};

/// The base of a module's split BTF: the kernel's (vmlinux) BTF, whose type
/// ids and string offsets the module's continue.
pub struct SplitBase<'a> {
    /// vmlinux's string section.
    pub strings: &'a [u8],
    /// Number of vmlinux types, `void` (id 0) included: the module's first
    /// type has this id.
    pub type_count: u32,
}

/// Number of types in a BTF blob, `void` included (its last id + 1).
pub fn type_count(data: &[u8]) -> Result<u32, BtfError> {
    let mut count = 1u32;
    walk(data, |_, _| {
        count += 1;
        false
    })?;
    Ok(count)
}

/// vmlinux's string section (a split BTF's names below its length are there).
pub fn string_section(data: &[u8]) -> Result<&[u8], BtfError> {
    sections(data).map(|(_, strings)| strings)
}

/// Calls `f(kind, name_off)` for each type in order until it returns true.
fn walk(data: &[u8], mut f: impl FnMut(u32, u32) -> bool) -> Result<(), BtfError> {
    let (types, _) = sections(data)?;
    let mut at = 0;
    while at < types.len() {
        let name_off = u32_at(types, at)?;
        let info = u32_at(types, at + 4)?;
        if f((info >> 24) & 0x1f, name_off) {
            return Ok(());
        }
        at += 12 + record_extra((info >> 24) & 0x1f, (info & 0xffff) as usize);
    }
    Ok(())
}

/// The BTF type ids of the functions (`BTF_KIND_FUNC`) named `names`, in a
/// kernel BTF blob: vmlinux's (`base` None), or a module's split BTF with
/// vmlinux as `base`, whose ids continue vmlinux's (the first module type is
/// `base.type_count`) and whose string offsets from `base.strings.len()` on
/// are its own (lower ones are vmlinux's strings, shared by deduplication).
/// That id, with the module's BTF object, is what loading an fentry program
/// on a module function takes.
pub fn func_ids(
    data: &[u8],
    base: Option<&SplitBase<'_>>,
    names: &[&str],
) -> Result<Vec<Option<u32>>, BtfError> {
    let (_, own) = sections(data)?;
    let (base_strings, first_id): (&[u8], u32) = match base {
        Some(b) => (b.strings, b.type_count),
        None => (&[], 1),
    };
    let name_at = |off: u32| -> &[u8] {
        let off = off as usize;
        let rest = if off < base_strings.len() {
            base_strings.get(off..)
        } else {
            own.get(off - base_strings.len()..)
        }
        .unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    };
    let mut found: Vec<Option<u32>> = vec![None; names.len()];
    let mut id = first_id;
    let mut left = names.len();
    walk(data, |kind, name_off| {
        if kind == KIND_FUNC {
            let name = name_at(name_off);
            for (slot, wanted) in found.iter_mut().zip(names) {
                if slot.is_none() && name == wanted.as_bytes() {
                    *slot = Some(id);
                    left -= 1;
                }
            }
        }
        id = id.saturating_add(1);
        left == 0
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ebpf::btf::{KIND_FUNC_PROTO, KIND_INT};

    /// A blob of `types` (kind, name offset, extra u32 words) and `strings`.
    fn raw_blob(types_in: &[(u32, u32, &[u32])], strings: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        for (kind, name_off, extra) in types_in {
            types.extend_from_slice(&name_off.to_le_bytes());
            let vlen = if *kind == KIND_FUNC_PROTO {
                extra.len() as u32 / 2
            } else {
                0
            };
            types.extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
            types.extend_from_slice(&0u32.to_le_bytes());
            for w in *extra {
                types.extend_from_slice(&w.to_le_bytes());
            }
        }
        crate::sources::ebpf::btf::tests::btf_blob(&types, strings)
    }

    /// Module BTF is split: ids continue vmlinux's, and names are looked up in
    /// vmlinux's strings below their length, in the module's own above.
    #[test]
    fn function_ids_in_split_btf() {
        // vmlinux: 1 int "int", 2 func_proto (one param), 3 func "shared".
        let base_strings = b"\0int\0shared\0".to_vec();
        let vmlinux = raw_blob(
            &[
                (KIND_INT, 1, &[32]),
                (KIND_FUNC_PROTO, 0, &[0, 1]),
                (KIND_FUNC, 5, &[]),
            ],
            &base_strings,
        );
        assert_eq!(type_count(&vmlinux), Ok(4));
        assert_eq!(
            func_ids(&vmlinux, None, &["shared", "int"]),
            Ok(vec![Some(3), None])
        );
        // module: 4 func_proto, 5 func "modfn" (own string), 6 func "shared"
        // (name deduplicated into vmlinux's strings).
        let own = b"\0modfn\0".to_vec();
        let modfn_off = base_strings.len() as u32 + 1;
        let module = raw_blob(
            &[
                (KIND_FUNC_PROTO, 0, &[]),
                (KIND_FUNC, modfn_off, &[]),
                (KIND_FUNC, 5, &[]),
            ],
            &own,
        );
        let base = SplitBase {
            strings: string_section(&vmlinux).unwrap(),
            type_count: type_count(&vmlinux).unwrap(),
        };
        assert_eq!(
            func_ids(&module, Some(&base), &["modfn", "shared", "absent"]),
            Ok(vec![Some(5), Some(6), None])
        );
        assert!(func_ids(b"not btf", None, &["x"]).is_err());
    }
}
