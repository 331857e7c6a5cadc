//! Least privilege: `vpn-node up` started as root becomes `[node] user` before it starts a
//! single thread, keeping only CAP_NET_ADMIN (for the TUN device and the `ip` commands
//! that set its addresses and routes). Everything it reads as root is read before.
//!
//! Capabilities are per thread and inherited by the threads a thread creates, so the drop
//! happens while the process has one thread: the runtime's threads all start with
//! CAP_NET_ADMIN and nothing else, and so do the `ip` commands they run (ambient set).

// The privilege calls are C library and kernel calls.
#![allow(unsafe_code)]

use std::ffi::CString;

use anyhow::{Context, Result, bail};

/// CAP_NET_ADMIN's bit (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
/// The capability ABI with 64-bit sets (linux/capability.h, `_LINUX_CAPABILITY_VERSION_3`).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The user `name`: its uid and primary gid.
fn lookup(name: &str) -> Result<(libc::uid_t, libc::gid_t)> {
    let c_name = CString::new(name).with_context(|| format!("user name {name:?}"))?;
    let mut entry: libc::passwd = unsafe_zeroed_passwd();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer's length is passed with it, and
    // `entry` only points into `buffer`, which outlives its use below.
    let rc = unsafe {
        libc::getpwnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found)
    };
    if rc != 0 || found.is_null() {
        bail!("no user {name:?} on this system ([node] user)");
    }
    Ok((entry.pw_uid, entry.pw_gid))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is plain C data (integers and pointers); all zeroes is a valid value
    // that getpwnam_r overwrites.
    unsafe { std::mem::zeroed() }
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot {what}"));
    }
    Ok(())
}

/// Becomes `user`, keeping CAP_NET_ADMIN (effective, permitted, inheritable and ambient)
/// and nothing else, with no way to gain privileges again. Call while the process has one
/// thread. Returns the uid taken.
pub(crate) fn drop_to(user: &str) -> Result<libc::uid_t> {
    let (uid, gid) = lookup(user)?;
    if uid == 0 {
        bail!("[node] user {user:?} is root: name an unprivileged user");
    }
    let keep = 1u32 << CAP_NET_ADMIN;
    // SAFETY: plain system calls on this (only) thread with valid arguments; each result is
    // checked.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities across setuid")?;
        check(libc::setgroups(0, std::ptr::null()), "drop supplementary groups")?;
        check(libc::setresgid(gid, gid, gid), "change group")?;
        check(libc::setresuid(uid, uid, uid), "change user")?;
        let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        let data =
            [CapData { effective: keep, permitted: keep, inheritable: keep }, CapData::default()];
        check(
            libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int,
            "keep only CAP_NET_ADMIN",
        )?;
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(CAP_NET_ADMIN),
                0,
                0,
            ),
            "pass CAP_NET_ADMIN on to the ip command",
        )?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "forbid new privileges")?;
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0), "reset keep capabilities")?;
        if libc::getuid() == 0 || libc::geteuid() == 0 {
            bail!("still root after changing to {user:?}");
        }
    }
    Ok(uid)
}

/// Whether the process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}
