//! The options of `crosvm run`, read from crosvm's own source (`src/crosvm/cmdline.rs`,
//! the fields of `struct RunCommand` and their `#[argh(...)]` and `#[cfg(...)]`
//! attributes): the record the phone rehearsal's stand-in crosvm checks the launcher's
//! command line against, since CI can neither fetch nor build crosvm.

/// One option: `--long` (and `-s`), `switch` or `option`, and the `#[cfg]` it is built
/// under, tab-separated as the record holds it.
pub fn run_options(cmdline_rs: &str) -> Result<Vec<String>, String> {
    let body = cmdline_rs
        .split("pub struct RunCommand {")
        .nth(1)
        .ok_or("no `pub struct RunCommand {` in the file")?;
    let mut out = Vec::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut pending = String::new();
    let mut depth = 0i32;
    for line in body.lines() {
        let s = line.trim();
        if s == "}" && depth == 0 {
            break;
        }
        if depth > 0 || s.starts_with("#[") {
            pending.push(' ');
            pending.push_str(s);
            depth += bracket_balance(s);
            if depth == 0 {
                attrs.push(std::mem::take(&mut pending).trim().to_string());
            }
            continue;
        }
        if s.is_empty() || s.starts_with("///") || s.starts_with("//") {
            continue;
        }
        if let Some(name) = field_name(s) {
            if let Some(line) = option_line(name, &attrs) {
                out.push(line);
            }
        }
        attrs.clear();
    }
    out.sort();
    Ok(out)
}

fn bracket_balance(s: &str) -> i32 {
    s.chars().fold(0, |n, c| match c {
        '[' => n + 1,
        ']' => n - 1,
        _ => n,
    })
}

/// `name` of a line `pub name: Type,` or `name: Type,`.
fn field_name(s: &str) -> Option<&str> {
    let s = s.strip_prefix("pub ").unwrap_or(s);
    let (name, rest) = s.split_once(':')?;
    (rest.starts_with(' ') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

/// The value of `key = "..."` (or `'.'`) inside an attribute.
fn quoted<'a>(attr: &'a str, key: &str, quote: char) -> Option<&'a str> {
    let at = attr.find(&format!("{key} = {quote}"))? + key.len() + 4;
    attr[at..].split(quote).next()
}

fn option_line(name: &str, attrs: &[String]) -> Option<String> {
    let argh = attrs.iter().find(|a| a.starts_with("#[argh("))?;
    let kind: String = argh["#[argh(".len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    if kind == "positional" {
        return None;
    }
    let long = quoted(argh, "long", '"').map_or_else(|| name.replace('_', "-"), str::to_string);
    let short = quoted(argh, "short", '\'')
        .map(|s| format!(" -{s}"))
        .unwrap_or_default();
    let cfg: Vec<&str> = attrs
        .iter()
        .filter_map(|a| a.strip_prefix("#[")?.strip_suffix(']'))
        .filter(|a| a.starts_with("cfg("))
        .collect();
    Some(
        format!("--{long}{short}\t{kind}\t{}", cfg.join(" "))
            .trim_end()
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_switches_short_names_and_cfgs_are_read() {
        let src = r#"
/// User-specified configuration for the `crosvm run` command.
#[derive(FromArgs, Default)]
pub struct RunCommand {
    #[argh(option, arg_name = "PATH")]
    /// path to user provided ACPI table
    pub acpi_table: Vec<PathBuf>,

    #[cfg(feature = "balloon")]
    #[argh(switch)]
    /// don't use virtio-balloon
    pub no_balloon: Option<bool>,

    #[argh(
        option,
        short = 's',
        arg_name = "PATH"
    )]
    /// path to the control socket
    pub socket: Option<PathBuf>,

    #[argh(option, long = "mac", arg_name = "MAC")]
    mac_address: Option<String>,

    #[argh(positional, arg_name = "KERNEL")]
    pub executable_path: Option<PathBuf>,
}
pub struct Other {
    #[argh(switch)]
    pub not_run: bool,
}
"#;
        assert_eq!(
            run_options(src).unwrap(),
            [
                "--acpi-table\toption",
                "--mac\toption",
                "--no-balloon\tswitch\tcfg(feature = \"balloon\")",
                "--socket -s\toption",
            ]
        );
        run_options("struct X {}").unwrap_err();
    }
}
