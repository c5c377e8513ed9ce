//! Hand-built IPv4 / TCP headers and checksums for crafted packets, and parsing of
//! received segments.

use crate::rules::CRAFT_TTL;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// MSS option of crafted SYNs. Must stay below 1460: with 1460 on IPv4 a later
/// keep-alive ACK decodes to the wrong cookie MSS index (cookie_invalid).
pub const CRAFT_MSS: u16 = 1300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub mss: Option<u16>,
}

impl TcpSegment {
    /// A crafted segment to the protected port; SYNs carry [`CRAFT_MSS`].
    pub fn to_protected(sport: u16, seq: u32, ack: u32, flags: u8) -> Self {
        Self::to_port(crate::rules::PROTECTED_PORT, sport, seq, ack, flags)
    }

    /// A crafted segment to `dport`; SYNs carry [`CRAFT_MSS`].
    pub fn to_port(dport: u16, sport: u16, seq: u32, ack: u32, flags: u8) -> Self {
        TcpSegment {
            sport,
            dport,
            seq,
            ack,
            flags,
            mss: (flags & SYN != 0).then_some(CRAFT_MSS),
        }
    }
}

/// How the TCP checksum of a crafted IPv6 packet is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V6Checksum {
    /// RFC 8200 pseudo header: what every correct stack accepts.
    Correct,
    /// The pseudo header nft_synproxy wrongly uses for IPv6 (it calls the IPv4
    /// helper, reading "saddr/daddr" at IPv4 offsets 12..20 of the IPv6 header, i.e.
    /// source address bytes 4..12). Such packets reach the synproxy expression and
    /// are counted; conntrack sees a bad checksum and calls them INVALID, which is
    /// what the SYNPROXY rule matches anyway.
    NftIpv4Helper,
}

/// One's complement sum of 16-bit words, added to `acc`.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data` plus an already-summed pseudo header.
pub fn checksum(data: &[u8], pseudo: u32) -> u16 {
    fold(sum16(data, pseudo))
}

fn pseudo_v4(src: [u8; 4], dst: [u8; 4], tcp_len: usize) -> u32 {
    let acc = sum16(&src, 0);
    let acc = sum16(&dst, acc);
    acc + u32::from(libc::IPPROTO_TCP as u16) + tcp_len as u32
}

fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, tcp_len: usize) -> u32 {
    let acc = sum16(&src.octets(), 0);
    let acc = sum16(&dst.octets(), acc);
    acc + (tcp_len as u32 >> 16) + (tcp_len as u32 & 0xffff) + libc::IPPROTO_TCP as u32
}

/// TCP header (+ MSS option) with a zero checksum field.
pub fn tcp_header(seg: &TcpSegment) -> Vec<u8> {
    let opt_len = if seg.mss.is_some() { 4 } else { 0 };
    let len = 20 + opt_len;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&seg.sport.to_be_bytes());
    b.extend_from_slice(&seg.dport.to_be_bytes());
    b.extend_from_slice(&seg.seq.to_be_bytes());
    b.extend_from_slice(&seg.ack.to_be_bytes());
    b.push(((len / 4) as u8) << 4);
    b.push(seg.flags);
    b.extend_from_slice(&64240u16.to_be_bytes()); // window
    b.extend_from_slice(&[0, 0]); // checksum
    b.extend_from_slice(&[0, 0]); // urgent pointer
    if let Some(mss) = seg.mss {
        b.extend_from_slice(&[2, 4]);
        b.extend_from_slice(&mss.to_be_bytes());
    }
    b
}

/// Full IPv4 packet (header + TCP) for an IP_HDRINCL raw socket, TTL 77.
pub fn build_v4(src: Ipv4Addr, dst: Ipv4Addr, seg: &TcpSegment, ip_id: u16) -> Vec<u8> {
    let mut tcp = tcp_header(seg);
    let csum = checksum(&tcp, pseudo_v4(src.octets(), dst.octets(), tcp.len()));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    let total = (20 + tcp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&ip_id.to_be_bytes());
    ip.extend_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip.push(CRAFT_TTL);
    ip.push(libc::IPPROTO_TCP as u8);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let hcsum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&hcsum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// Full IPv6 packet (header + TCP) for an IPPROTO_RAW (header-included) socket:
/// hop limit 77, flow label 0, so every byte the checksum may cover is ours.
pub fn build_v6(src: Ipv6Addr, dst: Ipv6Addr, seg: &TcpSegment, mode: V6Checksum) -> Vec<u8> {
    let mut tcp = tcp_header(seg);
    let mut ip = Vec::with_capacity(40 + tcp.len());
    ip.extend_from_slice(&0x6000_0000u32.to_be_bytes());
    ip.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    ip.push(libc::IPPROTO_TCP as u8);
    ip.push(CRAFT_TTL);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = match mode {
        V6Checksum::Correct => checksum(&tcp, pseudo_v6(&src, &dst, tcp.len())),
        V6Checksum::NftIpv4Helper => {
            // nf_ip_checksum() sums the whole skb from the network header (harmless
            // for IPv4, whose valid header sums to zero) plus an IPv4 pseudo header
            // read from IPv6 header bytes 12..20; make that total come out valid.
            let s = src.octets();
            let pseudo = pseudo_v4(
                [s[4], s[5], s[6], s[7]],
                [s[8], s[9], s[10], s[11]],
                tcp.len(),
            );
            checksum(&tcp, sum16(&ip, pseudo))
        }
    };
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// `packet` (from [`build_v4`]) with 4 bytes of IP options (NOPs) after
/// its header: the TCP header no longer follows a 20-byte IP header.
pub fn with_ip_options(mut packet: Vec<u8>) -> Vec<u8> {
    if packet.len() < 20 {
        return packet;
    }
    packet.splice(20..20, [1u8; 4]);
    packet[0] = 0x46;
    let total = packet.len() as u16;
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet[10..12].copy_from_slice(&[0, 0]);
    let hcsum = checksum(&packet[..24], 0);
    packet[10..12].copy_from_slice(&hcsum.to_be_bytes());
    packet
}

/// `packet` (from [`build_v6`] with [`V6Checksum::Correct`]) with an 8-byte
/// destination options header (PadN) before TCP: the TCP checksum does not
/// cover it, so it stays valid.
pub fn with_dst_options(mut packet: Vec<u8>) -> Vec<u8> {
    if packet.len() < 40 {
        return packet;
    }
    let payload = u16::from_be_bytes([packet[4], packet[5]]) + 8;
    packet[4..6].copy_from_slice(&payload.to_be_bytes());
    packet[6] = 60;
    packet.splice(40..40, [libc::IPPROTO_TCP as u8, 0, 1, 4, 0, 0, 0, 0]);
    packet
}

/// Parse a TCP header (ports, numbers, flags).
pub fn parse_tcp(b: &[u8]) -> Option<TcpSegment> {
    if b.len() < 20 {
        return None;
    }
    Some(TcpSegment {
        sport: u16::from_be_bytes([b[0], b[1]]),
        dport: u16::from_be_bytes([b[2], b[3]]),
        seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ack: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        flags: b[13],
        mss: None,
    })
}

/// Parse an IPv4 packet carrying TCP (as read from a raw IPv4 socket).
pub fn parse_v4(b: &[u8]) -> Option<(Ipv4Addr, TcpSegment)> {
    if b.len() < 20 || b[0] >> 4 != 4 || b[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    parse_tcp(b.get(ihl..)?).map(|t| (src, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_packet_checksums_verify() {
        let seg = TcpSegment {
            sport: 40000,
            dport: 8080,
            seq: 0x1234_5678,
            ack: 0,
            flags: SYN,
            mss: Some(CRAFT_MSS),
        };
        let src = Ipv4Addr::new(10, 77, 1, 1);
        let dst = Ipv4Addr::new(10, 77, 1, 2);
        let p = build_v4(src, dst, &seg, 7);
        assert_eq!(checksum(&p[..20], 0), 0);
        let tcp = &p[20..];
        assert_eq!(
            checksum(tcp, pseudo_v4(src.octets(), dst.octets(), tcp.len())),
            0
        );
        let (s, t) = parse_v4(&p).unwrap();
        assert_eq!(s, src);
        assert_eq!(
            (t.sport, t.dport, t.seq, t.flags),
            (40000, 8080, 0x1234_5678, SYN)
        );
    }

    #[test]
    fn v6_checksum_verifies_and_odd_lengths_pad() {
        let seg = TcpSegment {
            sport: 1,
            dport: 8080,
            seq: 9,
            ack: 10,
            flags: ACK,
            mss: None,
        };
        let src: Ipv6Addr = "fd00:77:1::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00:77:1::2".parse().unwrap();
        let p = build_v6(src, dst, &seg, V6Checksum::Correct);
        let tcp = &p[40..];
        assert_eq!(checksum(tcp, pseudo_v6(&src, &dst, tcp.len())), 0);
        assert_eq!(parse_tcp(tcp).unwrap().ack, 10);
        let p = build_v6(src, dst, &seg, V6Checksum::NftIpv4Helper);
        // fd00:77:1::1 -> bytes 4..8 = 00 01 00 00, bytes 8..12 = 0.
        let pseudo = pseudo_v4([0, 1, 0, 0], [0, 0, 0, 0], p.len() - 40);
        assert_eq!(checksum(&p, pseudo), 0);
        assert_eq!(checksum(&[0xff], 0), !0xff00);
    }

    #[test]
    fn padded_packets_keep_valid_headers() {
        let seg = TcpSegment {
            sport: 40000,
            dport: 8080,
            seq: 0x1234_5678,
            ack: 0,
            flags: SYN,
            mss: Some(CRAFT_MSS),
        };
        let (src, dst) = (Ipv4Addr::new(10, 77, 1, 1), Ipv4Addr::new(10, 77, 1, 2));
        let plain = build_v4(src, dst, &seg, 7);
        let p = with_ip_options(plain.clone());
        assert_eq!((p[0], p.len()), (0x46, plain.len() + 4));
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert_eq!(checksum(&p[..24], 0), 0);
        // The 20 bytes before the TCP header are not an IPv4 header.
        assert_ne!(p[4], 0x45);
        let (s, t) = parse_v4(&p).unwrap();
        assert_eq!((s, t.dport, t.seq), (src, 8080, 0x1234_5678));

        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fd00:77:1::1".parse().unwrap(),
            "fd00:77:1::2".parse().unwrap(),
        );
        let plain = build_v6(src, dst, &seg, V6Checksum::Correct);
        let p = with_dst_options(plain.clone());
        assert_eq!((p[6], p[40], p.len()), (60, 6, plain.len() + 8));
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        let tcp = &p[48..];
        assert_eq!(checksum(tcp, pseudo_v6(&src, &dst, tcp.len())), 0);
        // The 40 bytes before the TCP header do not start like IPv6.
        assert_ne!(p[8] >> 4, 6);
    }
}
