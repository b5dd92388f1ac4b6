//! PV device backends (console, xenstore; later blkback/netback), event channels and grant
//! tables.

pub mod console;
pub mod evtchn;
pub mod grant;
pub mod xenstore;
