//! Changes a command makes to the user's spec file (`disk grow`, `db add`), made as text
//! so the user's comments and layout stay as they were; the caller parses the result
//! before it writes it.

/// `text` (a spec file) with `size_gib = gib` in its `[table]` (`data_disk` or
/// `backup_disk`): the line replaced where it is, added under the table's header, or
/// the table appended; every other line stays as the user wrote it. The caller parses
/// the result before writing it.
pub fn with_disk_size(text: &str, table: &str, gib: u64) -> String {
    let header = format!("[{table}]");
    let line = format!("size_gib = {gib}");
    let mut out: Vec<String> = Vec::new();
    let mut in_table = false;
    let mut done = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            if in_table && !done {
                out.push(line.clone());
                done = true;
            }
            in_table = t == header;
        } else if in_table && !done && t.split('=').next().map(str::trim) == Some("size_gib") {
            let indent = &l[..l.len() - l.trim_start().len()];
            out.push(format!("{indent}{line}"));
            done = true;
            continue;
        }
        out.push(l.to_string());
    }
    if in_table && !done {
        out.push(line.clone());
        done = true;
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    if !done {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("{header}\n{line}\n"));
    }
    text
}

/// `text` (a spec file) with one more `[[apps]]` table at its end: appended as text so
/// the user's comments and layout stay as they were. The caller parses and validates
/// the result before writing it.
pub fn with_app_added(text: &str, name: &str, connection_limit: Option<u32>) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("\n[[apps]]\nname = {}\n", toml_string(name)));
    if let Some(limit) = connection_limit {
        out.push_str(&format!("connection_limit = {limit}\n"));
    }
    out
}

/// A TOML basic string (the name is validated afterwards; this only keeps a stray
/// quote or backslash from changing the file's structure).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::env_in;
    use crate::spec::Spec;
    use std::path::Path;

    #[test]
    fn an_added_app_keeps_the_file_and_reads_back_with_its_limit() {
        let env = env_in(Path::new("/base"), false);
        let text = "# my VM\nname = \"db\"\n\n[[apps]]\nname = \"forgejo\"\n\n[backup]\nretention_days = 3";
        let added = with_app_added(text, "gitea", Some(5));
        assert!(added.starts_with(text), "{added}");
        let s = Spec::parse(&added, Path::new("/d"), &env, "t.toml").unwrap();
        let names: Vec<(&str, u32)> = s
            .apps
            .iter()
            .map(|a| (a.name.as_str(), a.connection_limit))
            .collect();
        assert_eq!(names, [("forgejo", 20), ("gitea", 5)]);
        assert_eq!(s.backup.retention_days, 3);
        // A quote in the name cannot change the file's structure.
        let odd = with_app_added("", "a\"\nb = 1", None);
        let s = Spec::parse(&odd, Path::new("/d"), &env, "t.toml").unwrap();
        assert_eq!(s.apps[0].name, "a\"\nb = 1");
    }

    #[test]
    fn a_disk_size_is_changed_in_place_and_nothing_else_moves() {
        let env = env_in(Path::new("/base"), false);
        let text = "# my VM\nname = \"sql\"\n[data_disk]\n  size_gib = 4 # small\npath = \"p.img\"\n[backup]\nenabled = true\n";
        let out = with_disk_size(text, "data_disk", 8);
        assert_eq!(
            out,
            "# my VM\nname = \"sql\"\n[data_disk]\n  size_gib = 8\npath = \"p.img\"\n[backup]\nenabled = true\n"
        );
        let s = Spec::parse(&out, Path::new("/d"), &env, "t.toml").unwrap();
        assert_eq!(s.data_disk.size_gib, 8);
        // A table without the line gets it under its header; a missing table is added.
        let out = with_disk_size(
            "[backup_disk]\npath = \"b.img\"\n[vmm]\n",
            "backup_disk",
            12,
        );
        assert_eq!(
            out,
            "[backup_disk]\npath = \"b.img\"\nsize_gib = 12\n[vmm]\n"
        );
        let out = with_disk_size("name = \"sql\"", "data_disk", 6);
        assert_eq!(out, "name = \"sql\"\n\n[data_disk]\nsize_gib = 6\n");
        let s = Spec::parse(&out, Path::new("/d"), &env, "t.toml").unwrap();
        assert_eq!(s.data_disk.size_gib, 6);
    }
}
