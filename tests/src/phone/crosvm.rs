//! The stand-in crosvm: which options of the record of a real crosvm's `run` an Android
//! build has, and the mksh script that answers `--version` and `run --help` from them
//! and refuses any other option as crosvm does.

/// Whether an option of the record is built into Android's crosvm: an aarch64 build for
/// Android (unix, linux-like) with crosvm's default features.
fn built_for_android(cfg: &str) -> bool {
    const FEATURES: &[&str] = &[
        "audio",
        "balloon",
        "gpu",
        "qcow",
        "usb",
        "net",
        "slirp",
        "virtio_wl",
    ];
    fn eval(e: &str) -> bool {
        let e = e.trim();
        let args = |inner: &str| -> Vec<String> {
            let (mut depth, mut cur, mut out) = (0, String::new(), Vec::new());
            for c in inner.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(std::mem::take(&mut cur));
                        continue;
                    }
                    _ => {}
                }
                cur.push(c);
            }
            out.push(cur);
            out.into_iter().filter(|a| !a.trim().is_empty()).collect()
        };
        let inner = |p: &str| e.strip_prefix(p).and_then(|r| r.strip_suffix(')'));
        if let Some(i) = inner("any(") {
            return args(i).iter().any(|a| eval(a));
        }
        if let Some(i) = inner("all(") {
            return args(i).iter().all(|a| eval(a));
        }
        if let Some(i) = inner("not(") {
            return !eval(i);
        }
        match e.split_once('=') {
            Some((k, v)) => {
                let v = v.trim().trim_matches('"');
                match k.trim() {
                    "feature" => FEATURES.contains(&v),
                    "target_os" => v == "android" || v == "linux",
                    "target_arch" => v == "aarch64",
                    _ => false,
                }
            }
            None => e == "unix",
        }
    }
    cfg_bodies(cfg).iter().all(|c| eval(c))
}

/// The insides of each `cfg(...)` in `text` (`cfg(a) cfg(all(b, c))`: `a`, `all(b, c)`).
fn cfg_bodies(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("cfg(") {
        let body = &rest[start + 4..];
        let mut depth = 1;
        let end = body
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(body.len(), |(i, _)| i);
        out.push(&body[..end]);
        rest = &body[end..];
    }
    out
}

/// The options of the record that Android's crosvm has: `--long[ -s] switch|option`.
pub fn android_crosvm_options(record: &str) -> Vec<String> {
    record
        .lines()
        .filter(|l| l.starts_with("--"))
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, kind, cfg) = (f.next()?, f.next()?, f.next().unwrap_or(""));
            built_for_android(cfg).then(|| format!("{name} {kind}"))
        })
        .collect()
}

pub(super) const CROSVM: &str = r#"#!/system/bin/sh
# crosvm stand-in: the options come from a real crosvm's record; nothing boots here.
dir=/apex/com.android.virt/bin
echo "$*" >>/data/local/tmp/crosvm-calls
case "$1" in
  --version) echo "crosvm 0.1.0 (rehearsal stand-in; options of google/crosvm f1e797a)"; exit 0 ;;
  stop) exit 0 ;;
  run) shift ;;
  *) echo "crosvm stand-in: unknown command $1" >&2; exit 1 ;;
esac
if [ "$1" = --help ]; then
  echo "Usage: crosvm run [<kernel>] [options]"
  echo
  echo "Start a new crosvm instance"
  echo
  echo "Options:"
  while read -r name short kind; do
    [ "$kind" ] || { kind=$short; short=; }
    echo "  $name${short:+, $short}"
  done <"$dir/run-options"
  exit 0
fi
while [ $# -gt 0 ]; do
  case "$1" in
    -*)
      flag=${1%%=*}
      line=$(grep -e "^$flag " -e " $flag " "$dir/run-options" | head -n 1)
      if [ -z "$line" ]; then
        echo "Unrecognized argument: $1" >&2
        echo "refused: $1" >>/data/local/tmp/crosvm-calls
        exit 1
      fi
      case "$line" in *" option") [ "$flag" = "$1" ] && shift ;; esac
      ;;
  esac
  shift
done
echo "accepted" >>/data/local/tmp/crosvm-calls
echo "crosvm stand-in: every option is one this crosvm has; no VM boots in the rehearsal" >&2
exit 3
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_an_aarch64_android_build_with_default_features_has_is_offered() {
        let record = "# comment\n--block -b\toption\n--no-balloon\tswitch\tcfg(feature = \"balloon\")\n\
                      --no-i8042\tswitch\tcfg(target_arch = \"x86_64\")\n--log-file\toption\tcfg(windows)\n\
                      --swiotlb\toption\tcfg(target_arch = \"aarch64\")\n\
                      --pci-hotplug-slots\toption\tcfg(any(target_os = \"android\", target_os = \"linux\")) cfg(feature = \"pci-hotplug\")\n\
                      --ffa\toption\tcfg(all(target_os = \"android\", target_arch = \"aarch64\"))\n";
        assert_eq!(
            android_crosvm_options(record),
            [
                "--block -b option",
                "--no-balloon switch",
                "--swiotlb option",
                "--ffa option"
            ]
        );
    }
}
