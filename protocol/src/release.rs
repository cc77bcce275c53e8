//! Agent releases: the signed [`AgentRelease`] manifest of one agent binary,
//! the CPU [`Arch`] it runs on, and reading that arch from an ELF header.
//!
//! A release is signed with a key of the `agents` role (never `models`), its
//! binary is a content-addressed artifact delivered in chunks exactly like a
//! model's, and the agent refuses one for another arch, below its version
//! floor, expired, or whose bytes do not match (see
//! [`crate::trust::TrustState::verify_agent_release`] and
//! [`crate::trust::check_release_target`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;
use crate::manifest::{AgentVersion, Artifact};
use crate::signing::SignedPayload;

/// A CPU architecture Drover ships agents for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit x86 (ELF machine 0x3E).
    X86_64,
    /// 64-bit ARM (ELF machine 0xB7).
    Aarch64,
    /// 32-bit ARM, hard float (ELF machine 0x28).
    Armv7,
}

impl Arch {
    /// Every arch, for listings and error messages.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Armv7];

    /// The name used in flags, listings and selectors.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Armv7 => "armv7",
        }
    }

    /// Parses a name. Besides the canonical names this accepts what devices
    /// report in Hello (`std::env::consts::ARCH` says `arm` on armv7) and
    /// the Debian names (`amd64`, `arm64`, `armhf`).
    pub fn parse(s: &str) -> Option<Arch> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86-64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            "armv7" | "armv7l" | "armhf" | "arm" => Some(Arch::Armv7),
            _ => None,
        }
    }

    /// The ELF `e_machine` value of this arch.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x3E,
            Arch::Aarch64 => 0xB7,
            Arch::Armv7 => 0x28,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes are not an agent binary Drover can ship.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Fewer bytes than an ELF header.
    #[error("{0} bytes is too short for an ELF header")]
    TooShort(usize),
    /// The magic number is not `\x7fELF`.
    #[error("not an ELF file (bad magic number)")]
    NotElf,
    /// The class or data-encoding byte is not a valid value.
    #[error("ELF header has an invalid class or byte order")]
    BadHeader,
    /// Not an executable or position-independent executable.
    #[error("ELF type {0} is not an executable")]
    NotExecutable(u16),
    /// A machine (or word size) Drover builds no agent for.
    #[error("ELF machine {machine:#x} ({bits}-bit) is not x86_64, aarch64 or armv7")]
    UnsupportedMachine {
        /// `e_machine`.
        machine: u16,
        /// 32 or 64.
        bits: u8,
    },
}

/// The arch an ELF executable was built for, from its header alone.
pub fn elf_arch(bytes: &[u8]) -> Result<Arch, ElfError> {
    // e_ident (16 bytes), e_type (2), e_machine (2): the same offsets in the
    // 32- and 64-bit headers.
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ElfError::NotElf);
    }
    if bytes.len() < 20 {
        return Err(ElfError::TooShort(bytes.len()));
    }
    let bits = match bytes[4] {
        1 => 32,
        2 => 64,
        _ => return Err(ElfError::BadHeader),
    };
    let read = |at: usize| -> Result<u16, ElfError> {
        let pair = [bytes[at], bytes[at + 1]];
        match bytes[5] {
            1 => Ok(u16::from_le_bytes(pair)),
            2 => Ok(u16::from_be_bytes(pair)),
            _ => Err(ElfError::BadHeader),
        }
    };
    let e_type = read(16)?;
    // ET_EXEC = 2, ET_DYN = 3 (static-pie and PIE executables).
    if e_type != 2 && e_type != 3 {
        return Err(ElfError::NotExecutable(e_type));
    }
    let machine = read(18)?;
    match (machine, bits) {
        (0x3E, 64) => Ok(Arch::X86_64),
        (0xB7, 64) => Ok(Arch::Aarch64),
        (0x28, 32) => Ok(Arch::Armv7),
        _ => Err(ElfError::UnsupportedMachine { machine, bits }),
    }
}

/// Everything an agent needs to verify and install one build of itself.
/// Signed with an `agents` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRelease {
    /// The agent version this binary reports.
    pub version: AgentVersion,
    /// The arch it was built for (checked against its ELF header at push).
    pub arch: Arch,
    /// Digest and size of the binary; devices fetch it in chunks by digest,
    /// like a model artifact.
    pub artifact: Artifact,
    /// When the release was signed.
    pub created_at: Timestamp,
    /// After this the release is refused.
    pub expires_at: Timestamp,
}

impl SignedPayload for AgentRelease {
    const DOMAIN: &'static str = "agent_release";
}

impl AgentRelease {
    /// `agent@VERSION/ARCH`, for logs and reasons.
    pub fn label(&self) -> String {
        format!("agent@{}/{}", self.version, self.arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bits: u8, le: bool, e_type: u16, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = if bits == 64 { 2 } else { 1 };
        h[5] = if le { 1 } else { 2 };
        let put = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        h[16..18].copy_from_slice(&put(e_type));
        h[18..20].copy_from_slice(&put(machine));
        h
    }

    #[test]
    fn elf_headers_name_their_arch() {
        assert_eq!(elf_arch(&header(64, true, 3, 0x3E)), Ok(Arch::X86_64));
        assert_eq!(elf_arch(&header(64, true, 2, 0xB7)), Ok(Arch::Aarch64));
        assert_eq!(elf_arch(&header(32, true, 3, 0x28)), Ok(Arch::Armv7));
        for a in Arch::ALL {
            let bits = if a == Arch::Armv7 { 32 } else { 64 };
            assert_eq!(elf_arch(&header(bits, true, 3, a.elf_machine())), Ok(a));
        }
    }

    #[test]
    fn non_executables_and_other_machines_are_refused() {
        assert_eq!(elf_arch(b"\x7fELF"), Err(ElfError::TooShort(4)));
        assert_eq!(elf_arch(b"#!/bin/sh"), Err(ElfError::NotElf));
        assert_eq!(elf_arch(b""), Err(ElfError::NotElf));
        assert_eq!(elf_arch(&[0u8; 64]), Err(ElfError::NotElf));
        // A relocatable object (ET_REL) is not an executable.
        assert_eq!(
            elf_arch(&header(64, true, 1, 0x3E)),
            Err(ElfError::NotExecutable(1))
        );
        // RISC-V, and a 32-bit header claiming aarch64.
        assert!(matches!(
            elf_arch(&header(64, true, 3, 0xF3)),
            Err(ElfError::UnsupportedMachine { machine: 0xF3, .. })
        ));
        assert!(matches!(
            elf_arch(&header(32, true, 3, 0xB7)),
            Err(ElfError::UnsupportedMachine { bits: 32, .. })
        ));
        // Big-endian is read as such: 0x3E00 is not x86_64.
        let mut swapped = header(64, true, 3, 0x3E);
        swapped[5] = 2;
        assert!(elf_arch(&swapped).is_err());
        let mut bad_class = header(64, true, 3, 0x3E);
        bad_class[4] = 9;
        assert_eq!(elf_arch(&bad_class), Err(ElfError::BadHeader));
    }

    #[test]
    fn arch_names_parse() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.as_str()), Some(a));
        }
        assert_eq!(Arch::parse("arm"), Some(Arch::Armv7));
        assert_eq!(Arch::parse("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::parse("amd64"), Some(Arch::X86_64));
        assert_eq!(Arch::parse("mips"), None);
        assert_eq!(
            Arch::parse(std::env::consts::ARCH).is_some(),
            cfg!(any(
                target_arch = "x86_64",
                target_arch = "aarch64",
                target_arch = "arm"
            ))
        );
    }
}
