//! heapkeep as the C heap (`libheapkeep_preload.so` under `LD_PRELOAD`): the
//! C API's edge cases, threads with cross-thread frees and fork, C++
//! containers, and real programs (python3, perl) whose output must be
//! identical to a plain run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use heapkeep_tests::{build_packages, compile_c, workspace};

/// Builds the preload library once and returns its path.
fn preload_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let lib = build_packages(&["heapkeep-preload"]).join("libheapkeep_preload.so");
        assert!(lib.exists(), "{} missing", lib.display());
        lib
    })
}

/// Where compiled test programs go.
fn c_dir() -> PathBuf {
    let dir = workspace().join("target").join("preload-tests").join("c");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `tests/c/<src>` with `compiler` into a temporary executable.
fn compile(compiler: &str, src: &str, extra: &[&str]) -> PathBuf {
    compile_to(compiler, src, &src.replace('.', "_"), extra)
}

/// Compiles `tests/c/<src>` into `target/preload-tests/c/<name>`.
fn compile_to(compiler: &str, src: &str, name: &str, extra: &[&str]) -> PathBuf {
    let out = c_dir().join(name);
    compile_c(compiler, src, &out, &["-O1"], extra);
    out
}

fn run(cmd: &Path, args: &[&str], preload: bool) -> Output {
    let mut c = Command::new(cmd);
    c.args(args);
    if preload {
        c.env("LD_PRELOAD", preload_lib());
    }
    c.output()
        .unwrap_or_else(|e| panic!("run {}: {e}", cmd.display()))
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles a C test program, runs it under heapkeep, expects "ok".
fn c_program_prints_ok(src: &str, flags: &[&str]) {
    let exe = compile("cc", src, flags);
    let out = run(&exe, &[], true);
    assert_ok(&out, &format!("{src} under heapkeep"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{src}");
}

#[test]
fn c_api_edge_cases() {
    c_program_prints_ok("api.c", &["-ldl"]);
}

#[test]
fn memory_cap_from_the_environment_fails_allocations_beyond_it() {
    let exe = compile("cc", "cap.c", &["-ldl"]);
    let out = Command::new(&exe)
        .env("LD_PRELOAD", preload_lib())
        .env("HEAPKEEP_MEMORY_CAP", "64M")
        .output()
        .unwrap();
    assert_ok(&out, "cap.c");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn c_threads_cross_thread_frees_and_fork() {
    c_program_prints_ok("threads.c", &["-pthread"]);
}

#[test]
fn awkward_places_loading_dlopen_atfork_key_destructors_after_main() {
    // The same allocating library twice: linked (its constructor allocates
    // while the program loads) and dlopen'ed 50 times.
    let linked = compile_to("cc", "plugin.c", "libhk_linked.so", &["-shared", "-fPIC"]);
    let plugin = compile_to("cc", "plugin.c", "libhk_plugin.so", &["-shared", "-fPIC"]);
    let rpath = format!("-Wl,-rpath,{}", c_dir().display());
    let exe = compile(
        "cc",
        "awkward.c",
        &["-pthread", "-ldl", linked.to_str().unwrap(), &rpath],
    );
    let out = run(&exe, &[plugin.to_str().unwrap()], true);
    assert_ok(&out, "awkward.c under heapkeep");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn library_loaded_late_with_dlopen_serves_every_thread() {
    // Not preloaded: the program runs on glibc and dlopens heapkeep, whose
    // thread-local heap slot then lives in the loader's static TLS reserve.
    let exe = compile("cc", "dlopen_lib.c", &["-pthread", "-ldl"]);
    let out = run(&exe, &[preload_lib().to_str().unwrap()], false);
    assert_ok(&out, "dlopen_lib.c");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn cpp_containers_same_output() {
    let exe = compile("c++", "containers.cpp", &["-std=c++17"]);
    let plain = run(&exe, &[], false);
    let hk = run(&exe, &[], true);
    assert_ok(&plain, "containers plain");
    assert_ok(&hk, "containers under heapkeep");
    assert_eq!(plain.stdout, hk.stdout);
}

/// A real program gives identical output (and exit status) under heapkeep.
fn identical(program: &str, args: &[&str]) {
    let path = Path::new(program);
    let plain = run(path, args, false);
    let hk = run(path, args, true);
    assert_ok(&plain, &format!("{program} plain"));
    assert_ok(&hk, &format!("{program} under heapkeep"));
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&hk.stdout),
        "{program}: output differs under heapkeep"
    );
    assert!(!plain.stdout.is_empty(), "{program} printed nothing");
}

#[test]
fn python3_allocation_heavy_script_identical() {
    let script = "import json, collections\n\
d = {}\n\
for i in range(200000):\n    d[str(i)] = [i] * (i % 7)\n\
print(sum(len(v) for v in d.values()), len(json.dumps({k: d[k] for k in list(d)[:2000]})))\n\
c = collections.Counter(str(i % 1000) for i in range(300000))\n\
print(len(c), c.most_common(1)[0][1])\n\
s = ''.join(chr(65 + i % 26) for i in range(100000))\n\
print(len(s.split('A')), hash(s) == hash(s))\n";
    identical("/usr/bin/python3", &["-c", script]);
}

#[test]
fn perl_hashes_and_strings_identical() {
    let script = "my %h; $h{$_} = [1 .. ($_ % 9)] for 1 .. 100000; \
my $t = 0; $t += scalar(@{$h{$_}}) for keys %h; \
my $s = join(',', map { $_ * 3 } 1 .. 50000); print scalar(keys %h), \" $t \", length($s), \"\\n\";";
    identical("/usr/bin/perl", &["-e", script]);
}

/// Runs a shell script plainly and with every process of it on heapkeep (in
/// a fresh directory each); the output must be identical and not empty.
fn identical_script(name: &str, script: &str) {
    let base = c_dir().join(format!("{name}-runs"));
    let _ = std::fs::remove_dir_all(&base);
    let mut outputs = Vec::new();
    for preload in [false, true] {
        let dir = base.join(if preload { "heapkeep" } else { "plain" });
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Command::new("sh");
        c.args(["-euc", script]).current_dir(&dir);
        if preload {
            c.env("LD_PRELOAD", preload_lib());
        }
        let out = c.output().expect("run sh");
        assert_ok(&out, &format!("{name} (preload: {preload})"));
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert!(!outputs[0].is_empty(), "{name} printed nothing");
    assert_eq!(
        outputs[0], outputs[1],
        "{name}: output differs under heapkeep"
    );
}

#[test]
fn gcc_compiles_a_file_identically() {
    // 400 functions with loops, switches and string constants; the assembly
    // gcc prints must match byte for byte.
    let mut src = String::from("#include <string.h>\n");
    for i in 0..400 {
        src.push_str(&format!(
            "int f{i}(int x, const char *s) {{ int t = {i}; \
             for (int k = 0; k < x; k++) {{ switch ((k + t) % 5) {{ \
             case 0: t += k * {i}; break; case 1: t ^= (int)strlen(s); break; \
             case 2: t -= k; break; default: t += s[k % 3]; }} }} \
             return t + (int)strlen(\"function number {i}\"); }}\n"
        ));
    }
    let file = c_dir().join("gcc_input.c");
    std::fs::write(&file, src).unwrap();
    let script = format!("gcc -O2 -S -o - {}", file.display());
    identical_script("gcc", &script);
}

#[test]
fn git_init_commit_hundreds_of_files_gc_identical() {
    // Fixed identities and dates make the commit ids reproducible.
    let script = r#"
export GIT_AUTHOR_NAME=hk GIT_AUTHOR_EMAIL=hk@example.com GIT_COMMITTER_NAME=hk
export GIT_COMMITTER_EMAIL=hk@example.com GIT_AUTHOR_DATE='2026-01-01T00:00:00Z'
export GIT_COMMITTER_DATE='2026-01-01T00:00:00Z' GIT_CONFIG_NOSYSTEM=1 HOME="$PWD"
git init -q -b main repo
cd repo
i=0
while [ $i -lt 300 ]; do
    mkdir -p "d$((i % 17))"
    printf 'file %d
line two %d
' $i $((i * i)) > "d$((i % 17))/f$i.txt"
    i=$((i + 1))
done
git add -A
git commit -q -m 'three hundred files'
i=0
while [ $i -lt 300 ]; do echo "change $i" >> "d$((i % 17))/f$i.txt"; i=$((i + 7)); done
git commit -q -am 'second commit'
git -c pack.threads=1 gc -q
git rev-parse HEAD HEAD~1
git log --stat --format='%H %s' | tail -5
git ls-files | wc -l
git fsck --no-progress 2>&1 | wc -l
git count-objects -v | grep -E '^(count|in-pack|packs)'
"#;
    identical_script("git", script);
}

#[test]
fn sqlite3_builds_indexes_and_queries_identically() {
    let script = r#"
sqlite3 db.sqlite <<'SQL'
PRAGMA journal_mode=OFF;
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, payload BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
INSERT INTO t SELECT i, 'name-' || (i * 7919 % 60000), i % 97, zeroblob(i % 300) FROM n;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp ON t(grp, name);
SELECT count(*), sum(length(payload)), min(name), max(name) FROM t;
SELECT grp, count(*), group_concat(id % 10, '') FROM (SELECT * FROM t WHERE grp < 5 ORDER BY name LIMIT 200) GROUP BY grp;
UPDATE t SET name = upper(name) WHERE id % 3 = 0;
DELETE FROM t WHERE grp = 13;
SELECT count(*), count(DISTINCT name) FROM t;
VACUUM;
PRAGMA integrity_check;
SQL
"#;
    identical_script("sqlite3", script);
}
