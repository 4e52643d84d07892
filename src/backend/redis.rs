//! TEMPORARY stub: the redis backend is being written.
use super::Backend;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// Builds the redis backend (no I/O).
pub fn open(_settings: &Settings, _env: &dyn Fn(&str) -> Option<String>, _workers: u32) -> Result<Box<dyn Backend>> {
    Err(Error::input("the redis backend is not implemented yet"))
}
