//! TEMPORARY stub until the INI reader lands.
pub fn cache_settings(_text: &str, _path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    anyhow::bail!("INI files are not supported yet")
}
