//! Parsing a kernel configuration from its three homes: a `.config` file, the gzip'ed
//! `/proc/config.gz`, and the IKCONFIG blob embedded in a kernel image.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use flate2::read::GzDecoder;

use crate::ConfigError;

/// The value of one Kconfig option, as written in a `.config` or a fragment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// `CONFIG_FOO=y`: built in.
    Yes,
    /// `CONFIG_FOO=m`: built as a module.
    Module,
    /// `# CONFIG_FOO is not set`, `CONFIG_FOO=n`, or absent altogether.
    No,
    /// Any other value, verbatim: strings keep their quotes (`"ttyS0"`), numbers and
    /// hex are as written (`64`, `0x1000`).
    Text(String),
}

impl fmt::Display for Value {
    /// `y`, `m`, `not set`, or the text verbatim: the words of a mismatch line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Yes => f.write_str("y"),
            Value::Module => f.write_str("m"),
            Value::No => f.write_str("not set"),
            Value::Text(t) => f.write_str(t),
        }
    }
}

impl Value {
    /// Renders `option` with this value as a `.config` line (`CONFIG_X=y`,
    /// `# CONFIG_X is not set`), the form Kconfig and merge_config.sh read.
    pub fn config_line(&self, option: &str) -> String {
        match self {
            Value::Yes => format!("{option}=y"),
            Value::Module => format!("{option}=m"),
            Value::No => format!("# {option} is not set"),
            Value::Text(t) => format!("{option}={t}"),
        }
    }
}

/// One line of a `.config` or fragment, as understood.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// Blank or a plain comment.
    Blank,
    /// An option assignment (including "is not set").
    Option(String, Value),
    /// Anything else; ignored by [`KernelConfig::parse`], rejected in fragments by tests.
    Garbage,
}

/// Classifies one line. `# CONFIG_X is not set` counts as an assignment.
pub(crate) fn parse_line(line: &str) -> Line {
    let line = line.trim();
    if line.is_empty() {
        return Line::Blank;
    }
    if let Some(comment) = line.strip_prefix('#') {
        if let Some(name) = comment
            .trim_start()
            .strip_suffix(" is not set")
            .map(str::trim_end)
        {
            if is_option_name(name) {
                return Line::Option(name.to_string(), Value::No);
            }
        }
        return Line::Blank;
    }
    let Some((name, value)) = line.split_once('=') else {
        return Line::Garbage;
    };
    let name = name.trim_end();
    if !is_option_name(name) {
        return Line::Garbage;
    }
    let value = match value.trim_start() {
        "y" => Value::Yes,
        "m" => Value::Module,
        "n" => Value::No,
        other => Value::Text(other.to_string()),
    };
    Line::Option(name.to_string(), value)
}

fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Adds the `CONFIG_` prefix if the caller left it off.
fn full_name(option: &str) -> String {
    if option.starts_with("CONFIG_") {
        option.to_string()
    } else {
        format!("CONFIG_{option}")
    }
}

/// A parsed kernel configuration: what a kernel actually has, to be compared with the
/// fragments' requirements by [`crate::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    options: BTreeMap<String, Value>,
}

/// Largest config we inflate: real ones are a few hundred KiB.
const CONFIG_LIMIT: usize = 16 << 20;
/// Largest kernel payload we inflate while looking for IKCONFIG (an x86 vmlinux is
/// tens of MiB).
const PAYLOAD_LIMIT: usize = 512 << 20;
const IKCFG_ST: &[u8] = b"IKCFG_ST";
const IKCFG_ED: &[u8] = b"IKCFG_ED";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];

impl KernelConfig {
    /// Parses `.config` text. Tolerant by design (it reads whatever a kernel carries):
    /// comments, blank lines and lines it does not understand are skipped; a later
    /// assignment of the same option wins, as in Kconfig.
    pub fn parse(text: &str) -> KernelConfig {
        let mut options = BTreeMap::new();
        for line in text.lines() {
            if let Line::Option(name, value) = parse_line(line) {
                options.insert(name, value);
            }
        }
        KernelConfig { options }
    }

    /// Parses a gzip'ed `.config`: the running kernel's `/proc/config.gz`
    /// (CONFIG_IKCONFIG_PROC) or the blob embedded in an image.
    pub fn from_gzip(bytes: &[u8]) -> Result<KernelConfig, ConfigError> {
        let mut text = Vec::new();
        GzDecoder::new(bytes)
            .take(CONFIG_LIMIT as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|source| ConfigError::Gzip {
                len: bytes.len(),
                source,
            })?;
        if text.len() > CONFIG_LIMIT {
            return Err(ConfigError::TooLarge {
                limit: CONFIG_LIMIT,
            });
        }
        Ok(KernelConfig::parse(&String::from_utf8_lossy(&text)))
    }

    /// Reads the configuration embedded in a kernel boot image (CONFIG_IKCONFIG): so the
    /// launcher can refuse an unfit kernel before it boots anything.
    ///
    /// The config sits, gzip'ed, between the markers `IKCFG_ST` and `IKCFG_ED`. An arm64
    /// Image is uncompressed, so the markers are in the raw bytes; an x86 bzImage
    /// carries the kernel as a compressed payload, so failing the raw search every gzip
    /// member (`1f 8b 08`) in the file is inflated and searched in turn. This also
    /// covers an `Image.gz`. xz/zstd/lz4 payloads are not searched.
    pub fn from_kernel_image(bytes: &[u8]) -> Result<KernelConfig, ConfigError> {
        // A marker in the raw bytes that is followed by junk (a chance match inside
        // compressed data) must not stop the search of the gzip payloads.
        let mut first_error = match ikconfig_in(bytes, "") {
            Some(Ok(config)) => return Ok(config),
            Some(Err(e)) => Some(e),
            None => None,
        };
        let mut members = 0;
        for offset in find_all(bytes, GZIP_MAGIC) {
            let Some(payload) = bytes.get(offset..) else {
                continue;
            };
            let inflated = inflate_until_ikconfig(payload);
            if inflated.is_empty() {
                continue; // a stray 1f 8b 08, not a gzip member
            }
            members += 1;
            match ikconfig_in(&inflated, &format!(" of a gzip payload at offset {offset}")) {
                Some(Ok(config)) => return Ok(config),
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                None => {}
            }
        }
        Err(first_error.unwrap_or(ConfigError::NoIkconfig {
            len: bytes.len(),
            members,
        }))
    }

    /// The value of an option (`CONFIG_` prefix optional); [`Value::No`] when absent,
    /// which is what Kconfig means by absence.
    pub fn get(&self, option: &str) -> Value {
        self.lookup(option).cloned().unwrap_or(Value::No)
    }

    /// The value of an option only if the configuration mentions it (including as
    /// "is not set"): for diagnostics that tell "absent" from "switched off".
    pub fn lookup(&self, option: &str) -> Option<&Value> {
        if option.starts_with("CONFIG_") {
            self.options.get(option)
        } else {
            self.options.get(&full_name(option))
        }
    }

    /// How many options the configuration mentions: zero means the input was no config.
    pub fn len(&self) -> usize {
        self.options.len()
    }

    /// True when no option was found at all.
    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }

    /// Every option and its value, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.options.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Looks for `IKCFG_ST` in `bytes` and inflates the config after each occurrence:
/// `None` when there is no marker, else the first success or the first failure.
fn ikconfig_in(bytes: &[u8], inner: &str) -> Option<Result<KernelConfig, ConfigError>> {
    let mut first_error = None;
    for offset in find_all(bytes, IKCFG_ST) {
        let start = offset + IKCFG_ST.len();
        let Some(rest) = bytes.get(start..) else {
            continue;
        };
        let blob = match find(rest, IKCFG_ED, 0) {
            Some(end) => rest.get(..end).unwrap_or(rest),
            None => rest,
        };
        match KernelConfig::from_gzip(blob) {
            Ok(config) if !config.is_empty() => return Some(Ok(config)),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(ConfigError::BadIkconfig {
                    offset,
                    inner: inner.to_string(),
                    source: Box::new(e),
                });
            }
        }
    }
    first_error.map(Err)
}

/// Inflates one gzip member from the start of `payload`, best effort: stops at its end,
/// at the first corrupt byte, at [`PAYLOAD_LIMIT`], or as soon as a complete
/// `IKCFG_ST ... IKCFG_ED` is in the output, and returns what it got.
fn inflate_until_ikconfig(payload: &[u8]) -> Vec<u8> {
    let mut decoder = GzDecoder::new(payload);
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    // Output before `searched` holds no match of the marker being looked for; both
    // markers have the same length, so one cursor serves both searches.
    let mut searched = 0;
    let mut seen_start = false;
    while out.len() < PAYLOAD_LIMIT {
        let n = match decoder.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        out.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if !seen_start {
            if let Some(s) = find(&out, IKCFG_ST, searched) {
                seen_start = true;
                searched = s + IKCFG_ST.len();
            }
        }
        if seen_start && find(&out, IKCFG_ED, searched).is_some() {
            break;
        }
        searched = searched.max(out.len().saturating_sub(IKCFG_ST.len() - 1));
    }
    out
}

/// First occurrence of `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let tail = haystack.get(from..)?;
    if needle.is_empty() {
        return Some(from);
    }
    tail.windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Every occurrence of `needle` in `haystack`, lazily.
fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = find(haystack, needle, from)?;
        from = at + 1;
        Some(at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    const SAMPLE: &str = "\
#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.12.95 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT=\"gcc (Debian 12.2.0-14) 12.2.0\"
CONFIG_64BIT=y
CONFIG_VSOCKETS=y
CONFIG_VIRTIO_BLK=m
# CONFIG_MODULES is not set
CONFIG_NR_CPUS=64
CONFIG_PHYSICAL_START=0x1000000
CONFIG_CMDLINE=\"\"
";

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn parses_a_real_looking_config() {
        let c = KernelConfig::parse(SAMPLE);
        assert_eq!(c.get("CONFIG_64BIT"), Value::Yes);
        assert_eq!(c.get("VSOCKETS"), Value::Yes, "prefix is optional");
        assert_eq!(c.get("CONFIG_VIRTIO_BLK"), Value::Module);
        assert_eq!(c.get("CONFIG_MODULES"), Value::No);
        assert_eq!(c.lookup("CONFIG_MODULES"), Some(&Value::No));
        assert_eq!(c.get("CONFIG_ABSENT"), Value::No);
        assert_eq!(c.lookup("CONFIG_ABSENT"), None);
        assert_eq!(c.get("CONFIG_NR_CPUS"), Value::Text("64".into()));
        assert_eq!(
            c.get("CONFIG_PHYSICAL_START"),
            Value::Text("0x1000000".into())
        );
        assert_eq!(c.get("CONFIG_CMDLINE"), Value::Text("\"\"".into()));
        assert_eq!(
            c.get("CONFIG_CC_VERSION_TEXT"),
            Value::Text("\"gcc (Debian 12.2.0-14) 12.2.0\"".into())
        );
        assert_eq!(c.len(), 8);
    }

    #[test]
    fn tolerates_garbage_lines() {
        let text = "garbage\n=y\nCONFIG_=y\nFOO=y\nCONFIG_BAD NAME=y\nCONFIG_NOEQ\n\
                    #CONFIG_TIGHT is not set\n  CONFIG_SPACED = y \r\n\
                    # CONFIG_X is set\n# just a comment = y\n\u{fffd}\u{0}\n\
                    CONFIG_LATER=y\nCONFIG_LATER=m\nCONFIG_EMPTY=\n";
        let c = KernelConfig::parse(text);
        let got: Vec<(&str, &Value)> = c.iter().collect();
        assert_eq!(
            got,
            [
                ("CONFIG_EMPTY", &Value::Text(String::new())),
                ("CONFIG_LATER", &Value::Module),
                ("CONFIG_SPACED", &Value::Yes),
                ("CONFIG_TIGHT", &Value::No),
            ]
        );
        assert!(KernelConfig::parse("").is_empty());
    }

    #[test]
    fn classifies_lines() {
        assert_eq!(parse_line(""), Line::Blank);
        assert_eq!(parse_line("# comment"), Line::Blank);
        assert_eq!(parse_line("CONFIG_A y"), Line::Garbage);
        assert_eq!(
            parse_line("# CONFIG_A is not set"),
            Line::Option("CONFIG_A".into(), Value::No)
        );
        assert_eq!(
            parse_line("CONFIG_A=\"x=y\""),
            Line::Option("CONFIG_A".into(), Value::Text("\"x=y\"".into()))
        );
    }

    #[test]
    fn config_lines_round_trip() {
        for value in [
            Value::Yes,
            Value::Module,
            Value::No,
            Value::Text("\"s\"".into()),
            Value::Text("0x10".into()),
        ] {
            let line = value.config_line("CONFIG_T");
            assert_eq!(parse_line(&line), Line::Option("CONFIG_T".into(), value));
        }
    }

    #[test]
    fn gzip_round_trip() {
        let c = KernelConfig::from_gzip(&gzip(SAMPLE.as_bytes())).unwrap();
        assert_eq!(c, KernelConfig::parse(SAMPLE));
    }

    #[test]
    fn corrupt_gzip_is_an_error_naming_the_size() {
        let err = KernelConfig::from_gzip(b"not gzip at all").unwrap_err();
        assert!(matches!(err, ConfigError::Gzip { len: 15, .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot inflate"), "{err}");

        let mut truncated = gzip(SAMPLE.as_bytes());
        truncated.truncate(truncated.len() / 2);
        KernelConfig::from_gzip(&truncated).unwrap_err();
    }

    /// What `kernel/configs.c` puts into vmlinux: the markers around a gzip'ed config.
    fn ikconfig_blob(config: &str) -> Vec<u8> {
        let mut blob = b"IKCFG_ST".to_vec();
        blob.extend(gzip(config.as_bytes()));
        blob.extend_from_slice(b"IKCFG_ED");
        blob
    }

    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                x.to_be_bytes()[1]
            })
            .collect()
    }

    #[test]
    fn reads_the_config_of_an_uncompressed_image() {
        // An arm64 Image: the vmlinux bytes, markers in the clear.
        let mut image = noise(70_000, 1);
        image.extend(ikconfig_blob(SAMPLE));
        image.extend(noise(10_000, 2));
        let c = KernelConfig::from_kernel_image(&image).unwrap();
        assert_eq!(c.get("CONFIG_VSOCKETS"), Value::Yes);
    }

    #[test]
    fn reads_the_config_of_a_compressed_payload() {
        // An x86 bzImage: setup code, then a gzip'ed vmlinux holding the markers, then
        // more code. A decoy gzip member before it must be skipped. The "vmlinux" is
        // compressible, like a real one, so deflate does not store it verbatim.
        let compressible =
            |len, seed| -> Vec<u8> { noise(len, seed).iter().map(|b| b'a' + b % 8).collect() };
        let mut vmlinux = compressible(300_000, 3);
        vmlinux.extend(ikconfig_blob(SAMPLE));
        vmlinux.extend(compressible(50_000, 4));

        let mut image = noise(20_000, 5);
        image.extend(gzip(b"a decoy member without markers"));
        image.extend_from_slice(&[0x1f, 0x8b, 0x08, 0xff, 0xff]); // a stray magic
        image.extend(noise(1_000, 6));
        image.extend(gzip(&vmlinux));
        image.extend(noise(5_000, 7));
        assert!(
            find(&image, IKCFG_ST, 0).is_none(),
            "markers must be hidden"
        );

        let c = KernelConfig::from_kernel_image(&image).unwrap();
        assert_eq!(c, KernelConfig::parse(SAMPLE));
    }

    #[test]
    fn an_image_without_ikconfig_says_how_to_fix_it() {
        let mut image = noise(50_000, 8);
        image.extend(gzip(&noise(10_000, 9)));
        let err = KernelConfig::from_kernel_image(&image).unwrap_err();
        assert!(
            matches!(err, ConfigError::NoIkconfig { members: 1, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("no IKCONFIG (IKCFG_ST marker) found in the kernel image"),
            "{err}"
        );
        assert!(err.to_string().contains("CONFIG_IKCONFIG=y"), "{err}");
    }

    #[test]
    fn a_marker_followed_by_junk_is_reported() {
        let mut image = noise(1_000, 10);
        image.extend_from_slice(b"IKCFG_STnot gzipIKCFG_ED");
        let err = KernelConfig::from_kernel_image(&image).unwrap_err();
        assert!(
            matches!(err, ConfigError::BadIkconfig { offset: 1_000, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_stray_raw_marker_does_not_hide_the_payload() {
        let mut vmlinux = b"kernel text ".repeat(1_000);
        vmlinux.extend(ikconfig_blob(SAMPLE));
        let mut image = b"IKCFG_ST junk".to_vec();
        image.extend(gzip(&vmlinux));
        let c = KernelConfig::from_kernel_image(&image).unwrap();
        assert_eq!(c.get("CONFIG_64BIT"), Value::Yes);
    }

    #[test]
    fn finds_every_occurrence() {
        assert_eq!(find_all(b"abcabcab", b"ab").collect::<Vec<_>>(), [0, 3, 6]);
        assert_eq!(find_all(b"aaa", b"aa").collect::<Vec<_>>(), [0, 1]);
        assert_eq!(find(b"abc", b"c", 5), None);
        assert_eq!(find(b"", b"IKCFG_ST", 0), None);
    }
}
