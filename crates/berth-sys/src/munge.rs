//! MUNGE credentials (the credential service Slurm sites run): a client asks its host's
//! `munged` for a credential that says which uid it is, and the server asks its own (of the
//! same key) to check it. libmunge is loaded when first needed (`dlopen`), so that berth
//! builds and runs without it; remote use then says how to set MUNGE up.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::OnceLock;

type Ctx = *mut c_void;
type Encode = unsafe extern "C" fn(*mut *mut c_char, Ctx, *const c_void, c_int) -> c_int;
type Decode = unsafe extern "C" fn(
    *const c_char,
    Ctx,
    *mut *mut c_void,
    *mut c_int,
    *mut libc::uid_t,
    *mut libc::gid_t,
) -> c_int;
type CtxCreate = unsafe extern "C" fn() -> Ctx;
type CtxDestroy = unsafe extern "C" fn(Ctx);
type CtxSet = unsafe extern "C" fn(Ctx, c_int, ...) -> c_int;
type CtxStrerror = unsafe extern "C" fn(Ctx) -> *const c_char;
type Strerror = unsafe extern "C" fn(c_int) -> *const c_char;

/// `MUNGE_OPT_SOCKET` of munge.h.
const OPT_SOCKET: c_int = 8;
/// `EMUNGE_CRED_REPLAYED` of munge.h.
pub const CRED_REPLAYED: c_int = 17;

/// libmunge, loaded.
pub struct Munge {
    encode: Encode,
    decode: Decode,
    ctx_create: CtxCreate,
    ctx_destroy: CtxDestroy,
    ctx_set: CtxSet,
    ctx_strerror: CtxStrerror,
    strerror: Strerror,
}

/// Why MUNGE said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MungeError {
    /// libmunge is not on this host.
    #[error("MUNGE is not installed here ({0}); install it (apt-get install munge) and start munged with the farm's key")]
    NotInstalled(String),
    /// munged refused or could not be reached; the number is munge's error code.
    #[error("{1}")]
    Failed(c_int, String),
}

static LIB: OnceLock<Result<Munge, String>> = OnceLock::new();

fn sym<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T, String> {
    // SAFETY: dlsym on a handle dlopen gave; the name is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(format!("libmunge.so.2 has no {}", name.to_string_lossy()));
    }
    // SAFETY: T is the function pointer type of that symbol in munge.h, of a pointer's size.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

/// libmunge, loaded once.
pub fn load() -> Result<&'static Munge, MungeError> {
    LIB.get_or_init(|| {
        // SAFETY: dlopen of a library name; the handle is kept for the process's life.
        let h = unsafe { libc::dlopen(c"libmunge.so.2".as_ptr(), libc::RTLD_NOW) };
        if h.is_null() {
            return Err("libmunge.so.2 cannot be loaded".to_string());
        }
        Ok(Munge {
            encode: sym(h, c"munge_encode")?,
            decode: sym(h, c"munge_decode")?,
            ctx_create: sym(h, c"munge_ctx_create")?,
            ctx_destroy: sym(h, c"munge_ctx_destroy")?,
            ctx_set: sym(h, c"munge_ctx_set")?,
            ctx_strerror: sym(h, c"munge_ctx_strerror")?,
            strerror: sym(h, c"munge_strerror")?,
        })
    })
    .as_ref()
    .map_err(|e| MungeError::NotInstalled(e.clone()))
}

/// A context, destroyed when dropped.
struct Context<'a>(&'a Munge, Ctx);

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: a context munge_ctx_create made, destroyed once.
        unsafe { (self.0.ctx_destroy)(self.1) }
    }
}

impl Munge {
    fn context(&self, socket: Option<&Path>) -> Result<Context<'_>, MungeError> {
        // SAFETY: munge_ctx_create has no arguments; null means out of memory.
        let ctx = unsafe { (self.ctx_create)() };
        if ctx.is_null() {
            return Err(MungeError::Failed(0, "munge: out of memory".into()));
        }
        let c = Context(self, ctx);
        if let Some(s) = socket {
            let path = CString::new(s.as_os_str().as_encoded_bytes())
                .map_err(|_| MungeError::Failed(0, "munge socket path holds a NUL".into()))?;
            // SAFETY: MUNGE_OPT_SOCKET takes a C string, copied by libmunge.
            let e = unsafe { (self.ctx_set)(ctx, OPT_SOCKET, path.as_ptr()) };
            if e != 0 {
                return Err(self.error(e, ctx));
            }
        }
        Ok(c)
    }

    fn error(&self, e: c_int, ctx: Ctx) -> MungeError {
        // SAFETY: both return static or context-owned C strings, or null.
        let text = unsafe {
            let p = (self.ctx_strerror)(ctx);
            let p = if p.is_null() { (self.strerror)(e) } else { p };
            if p.is_null() {
                format!("munge error {e}")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        MungeError::Failed(e, format!("munge: {text}"))
    }

    /// A credential of this process's uid and gid, holding `payload`.
    pub fn encode(&self, socket: Option<&Path>, payload: &[u8]) -> Result<String, MungeError> {
        let c = self.context(socket)?;
        let mut cred: *mut c_char = std::ptr::null_mut();
        // SAFETY: cred is an out-pointer; payload is valid for its length.
        let e = unsafe {
            (self.encode)(
                &mut cred,
                c.1,
                payload.as_ptr().cast(),
                payload.len() as c_int,
            )
        };
        if e != 0 || cred.is_null() {
            return Err(self.error(e, c.1));
        }
        // SAFETY: libmunge made cred, a NUL-terminated string we free after copying it.
        let text = unsafe {
            let t = CStr::from_ptr(cred).to_string_lossy().into_owned();
            libc::free(cred.cast());
            t
        };
        Ok(text)
    }

    /// Checks a credential: its payload, and the uid and gid it proves.
    pub fn decode(
        &self,
        socket: Option<&Path>,
        cred: &str,
    ) -> Result<(Vec<u8>, u32, u32), MungeError> {
        let c = self.context(socket)?;
        let cred = CString::new(cred)
            .map_err(|_| MungeError::Failed(0, "a credential holds a NUL".into()))?;
        let mut buf: *mut c_void = std::ptr::null_mut();
        let mut len: c_int = 0;
        let (mut uid, mut gid): (libc::uid_t, libc::gid_t) = (0, 0);
        // SAFETY: every out-pointer is a local; cred is NUL-terminated.
        let e =
            unsafe { (self.decode)(cred.as_ptr(), c.1, &mut buf, &mut len, &mut uid, &mut gid) };
        let payload = if buf.is_null() {
            Vec::new()
        } else {
            // SAFETY: libmunge allocated len bytes at buf, freed here after the copy.
            unsafe {
                let v = std::slice::from_raw_parts(buf.cast::<u8>(), len.max(0) as usize).to_vec();
                libc::free(buf);
                v
            }
        };
        if e != 0 {
            return Err(self.error(e, c.1));
        }
        Ok((payload, uid, gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A munged of the test's own, with a key of its own, or None where munged is missing.
    fn munged(dir: &Path) -> Option<std::process::Child> {
        std::fs::write(dir.join("key"), [7u8; 1024]).ok()?;
        std::fs::set_permissions(
            dir.join("key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o400),
        )
        .ok()?;
        let c = std::process::Command::new("munged")
            .arg("--foreground")
            .arg("--force")
            .arg(format!("--key-file={}", dir.join("key").display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-file={}", dir.join("log").display()))
            .arg(format!("--seed-file={}", dir.join("seed").display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dir.join("sock").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(c)
    }

    #[test]
    #[ignore = "needs root and munge (apt-get install munge): .ci/run runs it with --include-ignored"]
    fn a_credential_proves_the_uid_and_its_payload_and_is_used_once() {
        let d = tempfile::tempdir().unwrap();
        let mut daemon = munged(d.path()).expect("munged");
        let sock = d.path().join("sock");
        let m = load().expect("libmunge");
        let cred = m.encode(Some(&sock), b"channel hash").unwrap();
        let (payload, uid, _) = m.decode(Some(&sock), &cred).unwrap();
        assert_eq!(payload, b"channel hash");
        assert_eq!(uid, crate::euid());
        match m.decode(Some(&sock), &cred) {
            Err(MungeError::Failed(CRED_REPLAYED, _)) => {}
            other => panic!("a replayed credential: {other:?}"),
        }
        let bad = cred.replace('A', "B");
        assert!(m.decode(Some(&sock), &bad).is_err());
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
}
