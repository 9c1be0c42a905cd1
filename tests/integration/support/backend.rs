//! `Backend`: one scenario against both stores, etcd and `--embedded` (for `scenarios.rs`).
//!
//! `Backend::Etcd` is a per-test etcd and a hound on it; `Backend::Embedded` is
//! `hound --embedded -p 0`, no etcd. Both hand back a `BackendHound`, which derefs to `Hound`,
//! so every helper taking `&Hound` takes it.

use super::{Etcd, Hound};

/// The store a hound runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A per-test etcd and `hound --etcd URL` on it.
    Etcd,
    /// `hound --embedded`: registrations live in the hound process; no etcd at all.
    Embedded,
}

impl Backend {
    /// Starts a hound on this backend with `-p 0` and `extra_args`, and waits until it is
    /// healthy. On etcd it gets its own etcd and unique namespaces, as [`Hound::start`] does.
    pub fn start(self, extra_args: &[&str]) -> BackendHound {
        match self {
            Backend::Etcd => {
                let etcd = Etcd::start();
                let hound = Hound::builder(&etcd)
                    // Cleared already (HOUND_ENV); set anyway, so `--etcd` is never refused.
                    .env("HOUND_EMBEDDED", "0")
                    .args(extra_args.iter().copied())
                    .start();
                BackendHound {
                    hound,
                    etcd: Some(etcd),
                    backend: self,
                }
            }
            Backend::Embedded => {
                let hound = Hound::builder_for_url("")
                    .without_etcd_flag()
                    .without_namespace_flags()
                    .namespace("service")
                    .arg("--embedded")
                    .args(extra_args.iter().copied())
                    .start();
                BackendHound {
                    hound,
                    etcd: None,
                    backend: self,
                }
            }
        }
    }
}

/// A hound started by [`Backend::start`], with the etcd it uses (if any); both killed on drop.
pub struct BackendHound {
    // Fields drop in order: the hound goes before its etcd.
    hound: Hound,
    etcd: Option<Etcd>,
    backend: Backend,
}

impl BackendHound {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The etcd behind this hound; `None` on the embedded backend.
    pub fn etcd(&self) -> Option<&Etcd> {
        self.etcd.as_ref()
    }

    /// A second hound serving the same registrations and events (same etcd, same namespaces),
    /// started with `extra_args`. `None` on the embedded backend: its store lives inside this
    /// one process, so no other hound can share it.
    pub fn peer(&self, extra_args: &[&str]) -> Option<Hound> {
        let etcd = self.etcd.as_ref()?;
        Some(
            Hound::builder(etcd)
                .namespaces_of(&self.hound)
                .env("HOUND_EMBEDDED", "0")
                .args(extra_args.iter().copied())
                .start(),
        )
    }
}

impl std::ops::Deref for BackendHound {
    type Target = Hound;

    fn deref(&self) -> &Hound {
        &self.hound
    }
}

impl std::ops::DerefMut for BackendHound {
    fn deref_mut(&mut self) -> &mut Hound {
        &mut self.hound
    }
}

/// Whether `test` is `scenario` followed by `suffix`: checked at compile time, so every
/// generated test is named `<scenario>_on_etcd` / `<scenario>_on_embedded`.
pub const fn named_after(test: &str, scenario: &str, suffix: &str) -> bool {
    let (test, scenario, suffix) = (test.as_bytes(), scenario.as_bytes(), suffix.as_bytes());
    if test.len() != scenario.len() + suffix.len() {
        return false;
    }
    let mut i = 0;
    while i < test.len() {
        let expected = if i < scenario.len() {
            scenario[i]
        } else {
            suffix[i - scenario.len()]
        };
        if test[i] != expected {
            return false;
        }
        i += 1;
    }
    true
}

/// `scenario => scenario_on_etcd, scenario_on_embedded;` makes one `#[test]` per backend, each
/// under the usual watchdog.
#[allow(unused_macros)] // The soak shares this harness and has no scenarios.
macro_rules! on_both_backends {
    ($($scenario:ident => $on_etcd:ident, $on_embedded:ident;)+) => {
        $(
            const _: () = assert!(
                $crate::support::named_after(stringify!($on_etcd), stringify!($scenario), "_on_etcd")
                    && $crate::support::named_after(stringify!($on_embedded), stringify!($scenario), "_on_embedded"),
                "tests must be named <scenario>_on_etcd and <scenario>_on_embedded"
            );

            #[test]
            fn $on_etcd() {
                let _w = watchdog();
                $scenario(Backend::Etcd);
            }

            #[test]
            fn $on_embedded() {
                let _w = watchdog();
                $scenario(Backend::Embedded);
            }
        )+
    };
}
pub(crate) use on_both_backends;
