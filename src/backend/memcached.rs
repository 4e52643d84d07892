//! TEMPORARY stub: the memcached backend is being written.
use super::Backend;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// Builds the memcached backend (no I/O).
pub fn open(_settings: &Settings, _env: &dyn Fn(&str) -> Option<String>, _workers: u32) -> Result<Box<dyn Backend>> {
    Err(Error::input("the memcached backend is not implemented yet"))
}
