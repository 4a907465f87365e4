//! The workloads: C programs compiled at run time, and real programs of
//! this machine with the inputs the harness writes for them.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// Which table a workload is reported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// The C workloads (`c/*.c`).
    C,
    /// Real programs of this machine.
    Real,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::C => "C workloads",
            Group::Real => "real programs",
        }
    }
}

/// The shared header of the C workloads.
pub const C_COMMON: (&str, &str) = ("hk_common.h", include_str!("../c/hk_common.h"));

/// The runner that starts every measured program (see `measure::Runner`).
pub const RUNNER_SOURCE: &str = include_str!("../c/runner.c");

/// Compiles the runner into `dir/bin/hk-runner`.
pub fn build_runner(dir: &Path) -> Result<PathBuf, String> {
    let cc = find_program("cc")
        .or_else(|| find_program("gcc"))
        .ok_or("no C compiler (cc) found")?;
    let src = dir.join("c");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&src)
        .and_then(|_| std::fs::create_dir_all(&bin))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = src.join("runner.c");
    let exe = bin.join("hk-runner");
    std::fs::write(&file, RUNNER_SOURCE)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let out = Command::new(&cc)
        .env_remove("LD_PRELOAD")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&file)
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed: {}",
            tail(&String::from_utf8_lossy(&out.stderr), 400)
        ));
    }
    Ok(exe)
}

/// A C workload: name, source, what it does.
pub struct CSource {
    pub name: &'static str,
    pub source: &'static str,
    pub about: &'static str,
}

/// The C workloads, in report order (the families of `bench/src/workloads`).
pub const C_WORKLOADS: &[CSource] = &[
    CSource {
        name: "small",
        source: include_str!("../c/small.c"),
        about: "small short-lived objects in one thread: alloc/free pairs, a FIFO window, binary trees",
    },
    CSource {
        name: "larson",
        source: include_str!("../c/larson.c"),
        about: "4 threads replacing random slots, batches handed to other threads to free",
    },
    CSource {
        name: "prodcons",
        source: include_str!("../c/prodcons.c"),
        about: "a producer thread allocates, a consumer thread frees",
    },
    CSource {
        name: "random",
        source: include_str!("../c/random.c"),
        about: "random sizes 8 B..32 KiB over a live set of 50 000 slots",
    },
    CSource {
        name: "realloc",
        source: include_str!("../c/realloc.c"),
        about: "arrays doubling side by side, strings grown by exact reallocs, 256-byte steps, shrinking",
    },
    CSource {
        name: "large",
        source: include_str!("../c/large.c"),
        about: "blocks of 64 KiB..16 MiB touched page by page, 4 live",
    },
    CSource {
        name: "churn",
        source: include_str!("../c/churn.c"),
        about: "800 short-lived threads in waves of 4 handing objects on",
    },
    CSource {
        name: "memreturn",
        source: include_str!("../c/memreturn.c"),
        about: "256 MiB of mixed sizes, 90% freed at random, resident set after (stderr)",
    },
];

/// A real program: name and what it does.
pub const REAL_PROGRAMS: &[(&str, &str)] = &[
    (
        "python",
        "/usr/bin/python3: dicts, lists, strings, json (programs/workload.py)",
    ),
    (
        "perl",
        "perl: hashes, arrays, strings, regex substitutions (programs/workload.pl)",
    ),
    (
        "sqlite",
        "sqlite3 :memory:: 100k inserts in a transaction, 2 indexes, queries, update, delete",
    ),
    (
        "gcc",
        "gcc -O2 -S of a generated 120-function C file (assembly compared)",
    ),
    (
        "redis",
        "redis-server under the allocator, redis-benchmark -n N -t set,get,lpush,lpop timed",
    ),
];

pub const PYTHON_SCRIPT: &str = include_str!("../programs/workload.py");
pub const PERL_SCRIPT: &str = include_str!("../programs/workload.pl");

/// Every workload name, in report order.
pub fn all_names() -> Vec<(&'static str, Group, &'static str)> {
    C_WORKLOADS
        .iter()
        .map(|c| (c.name, Group::C, c.about))
        .chain(REAL_PROGRAMS.iter().map(|&(n, a)| (n, Group::Real, a)))
        .collect()
}

/// How to run a workload once.
pub enum Job {
    /// Run a program; its stdout is compared with the reference run.
    Exec {
        argv: Vec<OsString>,
        stdin: Option<PathBuf>,
        env: Vec<(&'static str, &'static str)>,
    },
    /// Start redis-server under the allocator and time redis-benchmark
    /// (not preloaded) against it.
    Redis {
        server: PathBuf,
        bench: PathBuf,
        requests: u64,
        dir: PathBuf,
    },
}

/// A workload ready to run.
pub struct Prepared {
    pub name: &'static str,
    pub group: Group,
    pub about: &'static str,
    pub job: Job,
}

/// Finds a program: the usual system directories first, then `PATH`
/// without shim directories (pyenv and the like wrap the real program in a
/// shell script).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(
            std::env::split_paths(&path).filter(|d| !d.to_string_lossy().contains("shims")),
        );
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Writes the C sources into `dir/c` and compiles each selected one with
/// `cc -O2` into `dir/bin`. Returns the jobs and the problems met.
pub fn build_c(dir: &Path, selected: &dyn Fn(&str) -> bool) -> (Vec<Prepared>, Vec<String>) {
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    let wanted: Vec<&CSource> = C_WORKLOADS.iter().filter(|c| selected(c.name)).collect();
    if wanted.is_empty() {
        return (jobs, notes);
    }
    let Some(cc) = find_program("cc").or_else(|| find_program("gcc")) else {
        notes.push("C workloads skipped: no C compiler (cc) found".to_string());
        return (jobs, notes);
    };
    let src = dir.join("c");
    let bin = dir.join("bin");
    if let Err(e) = std::fs::create_dir_all(&src).and_then(|_| std::fs::create_dir_all(&bin)) {
        notes.push(format!(
            "C workloads skipped: cannot create {}: {e}",
            dir.display()
        ));
        return (jobs, notes);
    }
    if let Err(e) = std::fs::write(src.join(C_COMMON.0), C_COMMON.1) {
        notes.push(format!("C workloads skipped: cannot write the header: {e}"));
        return (jobs, notes);
    }
    for c in wanted {
        let file = src.join(format!("{}.c", c.name));
        let exe = bin.join(c.name);
        if let Err(e) = std::fs::write(&file, c.source) {
            notes.push(format!(
                "{}: skipped, cannot write {}: {e}",
                c.name,
                file.display()
            ));
            continue;
        }
        let out = Command::new(&cc)
            .env_remove("LD_PRELOAD")
            .args(["-O2", "-pthread", "-o"])
            .arg(&exe)
            .arg(&file)
            .output();
        match out {
            Ok(o) if o.status.success() => jobs.push(Prepared {
                name: c.name,
                group: Group::C,
                about: c.about,
                job: Job::Exec {
                    argv: vec![exe.into_os_string()],
                    stdin: None,
                    env: vec![],
                },
            }),
            Ok(o) => notes.push(format!(
                "{}: skipped, cc failed: {}",
                c.name,
                tail(&String::from_utf8_lossy(&o.stderr), 400)
            )),
            Err(e) => notes.push(format!("{}: skipped, cannot run cc: {e}", c.name)),
        }
    }
    (jobs, notes)
}

/// Prepares the real programs that are installed (inputs go to `dir`).
pub fn prepare_real(
    dir: &Path,
    selected: &dyn Fn(&str) -> bool,
    redis_requests: u64,
) -> (Vec<Prepared>, Vec<String>) {
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    if let Err(e) = std::fs::create_dir_all(dir) {
        notes.push(format!(
            "real programs skipped: cannot create {}: {e}",
            dir.display()
        ));
        return (jobs, notes);
    }
    for &(name, about) in REAL_PROGRAMS {
        if !selected(name) {
            continue;
        }
        match prepare_one(name, dir, redis_requests) {
            Ok(job) => jobs.push(Prepared {
                name,
                group: Group::Real,
                about,
                job,
            }),
            Err(e) => notes.push(format!("{name}: skipped, {e}")),
        }
    }
    (jobs, notes)
}

fn prepare_one(name: &str, dir: &Path, redis_requests: u64) -> Result<Job, String> {
    let write = |file: &str, text: &str| -> Result<PathBuf, String> {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        Ok(p)
    };
    let need = |prog: &str| find_program(prog).ok_or_else(|| format!("{prog} not found"));
    match name {
        "python" => {
            // Not `python3` from PATH: that may be a pyenv shim (a bash script).
            let py = PathBuf::from("/usr/bin/python3");
            if !is_executable(&py) {
                return Err("/usr/bin/python3 not found".into());
            }
            let script = write("workload.py", PYTHON_SCRIPT)?;
            Ok(Job::Exec {
                argv: vec![py.into(), "-s".into(), "-B".into(), script.into()],
                stdin: None,
                env: vec![("PYTHONHASHSEED", "0")],
            })
        }
        "perl" => {
            let perl = need("perl")?;
            let script = write("workload.pl", PERL_SCRIPT)?;
            Ok(Job::Exec {
                argv: vec![perl.into(), script.into()],
                stdin: None,
                env: vec![("PERL_HASH_SEED", "0"), ("PERL_PERTURB_KEYS", "0")],
            })
        }
        "sqlite" => {
            let sqlite = need("sqlite3")?;
            let sql = write("workload.sql", &sqlite_script(100_000))?;
            Ok(Job::Exec {
                argv: vec![sqlite.into(), "-bail".into(), ":memory:".into()],
                stdin: Some(sql),
                env: vec![],
            })
        }
        "gcc" => {
            let gcc = need("gcc")?;
            let src = write("gen.c", &c_source(120))?;
            Ok(Job::Exec {
                argv: vec![
                    gcc.into(),
                    "-O2".into(),
                    "-S".into(),
                    "-o".into(),
                    "-".into(),
                    src.into(),
                ],
                stdin: None,
                env: vec![],
            })
        }
        "redis" => {
            let server = need("redis-server")?;
            let bench = need("redis-benchmark")?;
            let d = dir.join("redis");
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            Ok(Job::Redis {
                server,
                bench,
                requests: redis_requests,
                dir: d,
            })
        }
        _ => Err("unknown program".into()),
    }
}

/// Last `n` characters of `s`, on one line.
pub fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let start = s.char_indices().rev().nth(n).map_or(0, |(i, _)| i);
    s[start..].replace('\n', " | ")
}

/// Deterministic xorshift64* for the generated inputs.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
}

/// The SQL run by sqlite3: a table filled with `rows` inserts in one
/// transaction, two indexes, aggregate queries, an update and a delete.
pub fn sqlite_script(rows: usize) -> String {
    let mut g = Gen(0x5eed_0f5a_17e5_eed1);
    let mut s = String::with_capacity(rows * 120);
    s.push_str(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, score INTEGER, payload TEXT);\nBEGIN;\n",
    );
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    for _ in 0..rows {
        let len = 10 + g.below(190) as usize;
        let payload: String = (0..len)
            .map(|_| LETTERS[g.below(26) as usize] as char)
            .collect();
        let _ = writeln!(
            s,
            "INSERT INTO t(name,grp,score,payload) VALUES('name-{:07}',{},{},'{}');",
            g.below(10_000_000),
            g.below(1000),
            g.below(1_000_000),
            payload
        );
    }
    s.push_str(
        "COMMIT;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp ON t(grp, score);
SELECT grp, count(*), sum(score) FROM t GROUP BY grp ORDER BY 3 DESC, 1 LIMIT 5;
SELECT count(*) FROM t WHERE name BETWEEN 'name-1' AND 'name-2';
SELECT name, score FROM t ORDER BY name, id LIMIT 3 OFFSET 50000;
SELECT count(DISTINCT length(payload)), sum(length(payload)) FROM t;
SELECT substr(payload, 1, 3) AS p, count(*) FROM t GROUP BY p ORDER BY 2 DESC, 1 LIMIT 3;
UPDATE t SET payload = payload || upper(substr(payload, 1, 20)) WHERE grp % 7 = 0;
DELETE FROM t WHERE grp % 11 = 0;
SELECT a.grp, count(*) FROM t a JOIN t b ON a.grp = b.grp AND a.score < b.score WHERE a.grp < 3 GROUP BY a.grp;
SELECT count(*), sum(length(payload)) FROM t;
",
    );
    s
}

/// A C file for gcc: `functions` functions with loops, switches, inline
/// helpers and struct updates, and a table of them.
pub fn c_source(functions: usize) -> String {
    let mut s = String::from(
        "#include <stddef.h>\n#include <string.h>\nstruct v { long a, b, c; double x[4]; };\n",
    );
    for i in 0..functions {
        let _ = writeln!(
            s,
            "static long f{i}_helper(const long *a, size_t k) {{ return a[k] * {} + (long)k; }}",
            i + 7
        );
    }
    for i in 0..functions {
        let prev = i.saturating_sub(1);
        let _ = write!(
            s,
            "
static inline long h{i}(long x) {{ return (x * {mulc}L) ^ (x >> {sh}); }}
long f{i}(const long *a, size_t n, struct v *s) {{
    long acc = {i};
    for (size_t k = 0; k < n; k++) {{
        switch ((a[k] + {i}) & 7) {{
        case 0: acc += h{i}(a[k]); break;
        case 1: acc ^= a[k] << {sh5}; break;
        case 2: acc -= s->a * a[k]; break;
        case 3: s->x[k & 3] += (double)a[k] * {i}.5; break;
        case 4: acc = acc * 31 + (long)s->x[(k + 1) & 3]; break;
        case 5: s->b += acc % {m}; break;
        default: acc += f{prev}_helper(a, k); break;
        }}
    }}
    for (int j = 0; j < {loops}; j++) {{ s->c += acc >> j; acc = h{i}(acc + j); }}
    return acc + s->a + s->b + s->c;
}}
",
            mulc = (i as u64 * 2_654_435_761) % 1_000_003,
            sh = i % 13 + 1,
            sh5 = i % 5,
            m = i + 3,
            loops = i % 16 + 4,
        );
    }
    s.push_str("long (*const table[])(const long *, size_t, struct v *) = {");
    for i in 0..functions {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "f{i}");
    }
    s.push_str("};\n");
    s
}
