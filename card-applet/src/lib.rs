//! Civic Card applet: an ISO 7816-4 application in the house style of opcard-rs and
//! piv-authenticator.
//!
//! Layers, top to bottom:
//! - [`io::Card`]: raw APDU bytes in, response bytes out. Command chaining, response chunking
//!   (61xx / GET RESPONSE) and extended lengths live here and nowhere else.
//! - [`apdu::CommandApdu`]: the ISO 7816-4 section 5.1 parser (cases 1 to 4, short and extended).
//! - [`command::Command`]: the typed command, parsed once at the boundary.
//! - [`applet`]: the handlers, which return data or a [`protocol::Status`].
//! - [`store`]: the persistent state, its serialisation and the [`store::Store`] trait.
//! - [`terminal`]: terminal certificates (COSE_Sign1), shared with the reader.
//! - [`sm`]: PACE and ISO 7816-4 secure messaging, between the raw bytes and the chaining
//!   layer of [`io::Card`]; shared with the reader (the terminal side).
//!
//! The core is `no_std` + `alloc`; the `std` feature adds [`store::FileStore`], `OsRng`
//! convenience constructors and the `civic-card` binary (vpcd runner).

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod apdu;
pub mod applet;
pub mod atr;
pub mod command;
pub mod fixed_base;
pub mod io;
pub mod protocol;
pub mod sm;
pub mod state;
pub mod store;
pub mod terminal;

pub use io::Card;
pub use protocol::Status;
pub use store::{MemoryStore, Store, StoreError};

#[cfg(feature = "std")]
pub use store::FileStore;
