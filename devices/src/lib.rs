//! PV device backends (console, xenstore; later blkback/netback) and event channels.

pub mod console;
pub mod evtchn;
pub mod xenstore;
