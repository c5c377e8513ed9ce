//! A small reader of the kernel's BTF type section (`/sys/kernel/btf/vmlinux`):
//! just enough to find a member's byte offset in a named struct, following
//! anonymous struct/union members. The eBPF programs get these offsets as
//! globals, because aya has no CO-RE field relocations for Rust programs and
//! the layouts move between kernels (`struct net` -> `ns.inum` moved in 6.18).

mod split;

pub use split::{func_ids, string_section, type_count, SplitBase};

use std::collections::HashMap;
use std::path::Path;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("{0}")]
    Malformed(String),
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {st} has no member {member} in the kernel's BTF")]
    NoMember { st: String, member: String },
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset (bitfield members are never what we look for).
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    /// The header's size/type word: the referenced type id for modifiers.
    size_or_type: u32,
    members: Vec<Member>,
}

/// The parsed type section: composite types with their members, by type id.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id (0 is `void`).
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at {at}")))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at {at}")))
}

impl Btf {
    pub fn read(path: &Path) -> std::io::Result<Result<Btf, BtfError>> {
        let data = std::fs::read(path)?;
        Ok(Btf::parse(&data))
    }

    /// Parses a little-endian BTF blob (header, type section, string section).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (not little-endian BTF)".into(),
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| BtfError::Malformed("type section out of bounds".into()))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| BtfError::Malformed("string section out of bounds".into()))?
            .to_vec();
        let mut btf = Btf {
            strings,
            types: vec![Type {
                kind: 0,
                size_or_type: 0,
                members: Vec::new(),
            }],
            structs_by_name: HashMap::new(),
        };
        let mut at = 0;
        while at < types_bytes.len() {
            let name_off = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let size_or_type = u32_at(types_bytes, at + 8)?;
            at += 12;
            let mut members = Vec::new();
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for i in 0..vlen {
                    let m = at + i * 12;
                    let offset = u32_at(types_bytes, m + 8)?;
                    members.push(Member {
                        name_off: u32_at(types_bytes, m)?,
                        type_id: u32_at(types_bytes, m + 4)?,
                        bit_offset: if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        },
                    });
                }
            }
            at += record_extra(kind, vlen);
            let id = btf.types.len() as u32;
            if kind == KIND_STRUCT {
                let name = btf.string(name_off).to_string();
                if !name.is_empty() {
                    btf.structs_by_name.entry(name).or_insert(id);
                }
            }
            btf.types.push(Type {
                kind,
                size_or_type,
                members,
            });
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct st`, looking inside anonymous
    /// struct/union members.
    pub fn member_offset(&self, st: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(st)
            .ok_or_else(|| BtfError::NoStruct(st.to_string()))?;
        self.find_member(id, member, 0, &mut HashMap::new())
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                st: st.to_string(),
                member: member.to_string(),
            })
    }

    /// Bit offset of `member` in type `id`, through at most 8 levels of
    /// anonymous members. `searched` (type id -> shallowest depth it was
    /// searched at without a match) keeps a blob whose anonymous members refer
    /// to each other from being searched exponentially often: each type is
    /// searched at most once per depth. An offset that does not fit in 32 bits
    /// is no match.
    fn find_member(
        &self,
        id: u32,
        member: &str,
        depth: u32,
        searched: &mut HashMap<u32, u32>,
    ) -> Option<u32> {
        let ty = self.types.get(id as usize)?;
        if depth > 8 || !(ty.kind == KIND_STRUCT || ty.kind == KIND_UNION) {
            return None;
        }
        if searched.get(&id).is_some_and(|&d| d <= depth) {
            return None;
        }
        for m in &ty.members {
            let name = self.string(m.name_off);
            if name == member {
                return Some(m.bit_offset);
            }
            if name.is_empty() {
                let inner = self.skip_modifiers(m.type_id);
                if let Some(bits) = self
                    .find_member(inner, member, depth + 1, searched)
                    .and_then(|bits| m.bit_offset.checked_add(bits))
                {
                    return Some(bits);
                }
            }
        }
        searched.insert(id, depth);
        None
    }

    /// Anonymous members may be wrapped in typedef/volatile/const/restrict/type_tag.
    fn skip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..8 {
            match self.types.get(id as usize) {
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_or_type,
                _ => return id,
            }
        }
        id
    }
}

/// Bytes that follow a type's 12-byte header, by kind.
fn record_extra(kind: u32, vlen: usize) -> usize {
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        _ => 0,
    }
}

/// The type and string sections of a BTF blob.
fn sections(data: &[u8]) -> Result<(&[u8], &[u8]), BtfError> {
    if u16_at(data, 0)? != BTF_MAGIC {
        return Err(BtfError::Malformed(
            "bad magic (not little-endian BTF)".into(),
        ));
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let section = |off: usize, len: usize, what: &str| {
        hdr_len
            .checked_add(off)
            .and_then(|start| Some(start..start.checked_add(len)?))
            .and_then(|range| data.get(range))
            .ok_or_else(|| BtfError::Malformed(format!("{what} section out of bounds")))
    };
    let types = section(
        u32_at(data, 8)? as usize,
        u32_at(data, 12)? as usize,
        "type",
    )?;
    let strings = section(
        u32_at(data, 16)? as usize,
        u32_at(data, 20)? as usize,
        "string",
    )?;
    Ok((types, strings))
}

/// The struct offsets the programs need, read from the running kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`
    pub net_inum: u32,
    /// `offsetof(struct nf_conn, ct_net)` (a `possible_net_t`: the pointer alone)
    pub ct_net: u32,
    /// `ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.l3num`: the entry's family
    pub ct_l3num: u32,
    /// `offsetof(struct net, net_cookie)` (a u64 since 5.14; absent before 5.7).
    pub net_cookie: Option<u32>,
    /// `offsetof(struct sk_buff, head)`
    pub skb_head: u32,
    /// `offsetof(struct sk_buff, network_header)` (a u16 offset from `head`)
    pub skb_network_header: u32,
}

impl KernelOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            net_inum: btf.member_offset("net", "ns")? + btf.member_offset("ns_common", "inum")?,
            ct_net: btf.member_offset("nf_conn", "ct_net")?,
            ct_l3num: btf.member_offset("nf_conn", "tuplehash")?
                + btf.member_offset("nf_conntrack_tuple_hash", "tuple")?
                + btf.member_offset("nf_conntrack_tuple", "src")?
                + btf.member_offset("nf_conntrack_man", "l3num")?,
            net_cookie: btf.member_offset("net", "net_cookie").ok(),
            skb_head: btf.member_offset("sk_buff", "head")?,
            skb_network_header: btf.member_offset("sk_buff", "network_header")?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { int b; int c; }; int d; }`
    /// plus `struct net { int x; struct ns_common ns; }`, `struct ns_common { int s; unsigned inum; }`.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0outer\0a\0b\0c\0d\0net\0x\0ns\0ns_common\0s\0inum\0".to_vec();
        let off = |name: &str, strings: &[u8]| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let mut types = Vec::new();
        let push = |types: &mut Vec<u8>, v: u32| types.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(&mut types, off("int", &strings));
        push(&mut types, KIND_INT << 24);
        push(&mut types, 4);
        push(&mut types, 32);
        // 2: anonymous union { b; c }
        push(&mut types, 0);
        push(&mut types, (KIND_UNION << 24) | 2);
        push(&mut types, 4);
        for m in ["b", "c"] {
            push(&mut types, off(m, &strings));
            push(&mut types, 1);
            push(&mut types, 0);
        }
        // 3: struct outer { a @0; <anon> @32 bits; d @64 bits }
        push(&mut types, off("outer", &strings));
        push(&mut types, (KIND_STRUCT << 24) | 3);
        push(&mut types, 12);
        for (name, ty, bits) in [("a", 1, 0), ("", 2, 32), ("d", 1, 64)] {
            push(
                &mut types,
                if name.is_empty() {
                    0
                } else {
                    off(name, &strings)
                },
            );
            push(&mut types, ty);
            push(&mut types, bits);
        }
        // 4: struct ns_common { s @0; inum @64 bits }
        push(&mut types, off("ns_common", &strings));
        push(&mut types, (KIND_STRUCT << 24) | 2);
        push(&mut types, 12);
        for (name, bits) in [("s", 0), ("inum", 64)] {
            push(&mut types, off(name, &strings));
            push(&mut types, 1);
            push(&mut types, bits);
        }
        // 5: struct net { x @0; ns @128 bits }
        push(&mut types, off("net", &strings));
        push(&mut types, (KIND_STRUCT << 24) | 2);
        push(&mut types, 28);
        for (name, ty, bits) in [("x", 1, 0), ("ns", 4, 128)] {
            push(&mut types, off(name, &strings));
            push(&mut types, ty);
            push(&mut types, bits);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        push(&mut out, 24); // hdr_len
        push(&mut out, 0); // type_off
        push(&mut out, types.len() as u32);
        push(&mut out, types.len() as u32); // str_off
        push(&mut out, strings.len() as u32);
        out.extend_from_slice(&types);
        out.append(&mut strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "c"), Ok(4));
        assert_eq!(btf.member_offset("outer", "d"), Ok(8));
        assert_eq!(
            btf.member_offset("net", "ns").unwrap()
                + btf.member_offset("ns_common", "inum").unwrap(),
            24
        );
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    /// A member: name, type id, bit offset.
    type TestMember<'a> = (&'a str, u32, u32);

    /// A blob of structs (type ids from 1), each a name ("" anonymous, "a" or
    /// "b") and members (name, type id, bit offset).
    fn structs(types_in: &[(&str, &[TestMember])]) -> Vec<u8> {
        let strings = b"\0a\0b\0".to_vec();
        let name = |n: &str| match n {
            "a" => 1u32,
            "b" => 3,
            _ => 0,
        };
        let mut types = Vec::new();
        let push = |types: &mut Vec<u8>, v: u32| types.extend_from_slice(&v.to_le_bytes());
        for (st, members) in types_in {
            push(&mut types, name(st));
            push(&mut types, (KIND_STRUCT << 24) | members.len() as u32);
            push(&mut types, 8);
            for (n, ty, bits) in *members {
                push(&mut types, name(n));
                push(&mut types, *ty);
                push(&mut types, *bits);
            }
        }
        btf_blob(&types, &strings)
    }

    /// A BTF blob: the 24-byte header, then `types` and `strings`.
    pub(crate) fn btf_blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let header = [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ];
        for v in header {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(types);
        out.extend_from_slice(strings);
        out
    }

    /// Found by fuzzing (fuzz/artifacts/btf): nested anonymous members whose
    /// offsets add up past 32 bits panicked ("attempt to add with overflow").
    #[test]
    fn offsets_beyond_32_bits_are_no_match() {
        // struct a { struct { b @ 0x20 } @ 0xffff_fff0 }: b would be past 2^32 bits.
        let far: &[TestMember] = &[("", 2, 0xffff_fff0)];
        let inner: &[TestMember] = &[("b", 2, 0x20)];
        let btf = Btf::parse(&structs(&[("a", far), ("", inner)])).unwrap();
        assert_eq!(
            btf.member_offset("a", "b"),
            Err(BtfError::NoMember {
                st: "a".into(),
                member: "b".into()
            })
        );
        let near: &[TestMember] = &[("", 2, 0x40)];
        let btf = Btf::parse(&structs(&[("a", near), ("", inner)])).unwrap();
        assert_eq!(btf.member_offset("a", "b"), Ok(12));
    }

    /// Anonymous members referring back to their own struct: each type is
    /// searched once per depth, not once per path (2000^8 paths here).
    #[test]
    fn self_referring_anonymous_members_end_quickly() {
        let members = vec![("", 1, 0); 2000];
        let btf = Btf::parse(&structs(&[("a", &members)])).unwrap();
        let started = std::time::Instant::now();
        assert!(btf.member_offset("a", "b").is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"hello world, this is not BTF at all").is_err());
        assert!(Btf::parse(&[]).is_err());
    }

    /// On a machine with kernel BTF, the offsets the programs need exist.
    #[test]
    fn running_kernel_offsets() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{VMLINUX_BTF} missing on CI"
            );
            return;
        }
        let btf = Btf::read(path).unwrap().unwrap();
        let offsets = KernelOffsets::from_btf(&btf).unwrap();
        assert!(
            offsets.net_inum > 0 && offsets.ct_net > 0 && offsets.ct_l3num > 0,
            "{offsets:?}"
        );
    }
}
