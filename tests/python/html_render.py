#!/usr/bin/env python3
"""Renders every kind of mlc HTML report in headless Chromium and checks it.

    python3 tests/python/html_render.py [--mlc target/release/mlc]
        [--out target/tmp/html_render] [--python .venv/bin/python]

Makes the reports with the real binary on the digits fixtures: `mlc
compress` (int8 with pruning: the int8 and pruning searches plot), `mlc
tune` (a 2 s budget), `mlc check --html` (budgets that pass and one that
fails) and `mlc bench --compare --html --profile` (with `--ort` when the
Python given has onnxruntime), the last one on a copy of the model whose
file name is markup (`<img src=x onerror=...>`): the page must show it as
text.

Each report is loaded in an iframe of a small wrapper page (Chromium with
--allow-file-access-from-files, so the wrapper may read it) whose script
measures the report after it loaded: per plot (`svg.plot`) its data marks
(`.mark`) and how many have a non-empty bounding box, and the report's
scripts, images and elements that load anything (`src`, `href`). The
result is read back with --dump-dom. A report passes when Chromium logged
no console message (the reports have no script: any message is an error),
it has at least one plot, every plot has marks and every mark drew, and it
has no script, image or external reference. A screenshot of each is saved
in --out.

Chromium is Debian's `chromium`: when missing it is installed with apt-get
(as root, or with sudo that needs no password). Where it cannot be, the
script prints "skipped: <reason>" and exits 0, or fails with
MLC_REQUIRE_CHROMIUM=1. Every Chromium run is bounded (--timeout seconds).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVIL = "evil<img src=x onerror=alert(1)>&\"'.onnx"


class Skip(Exception):
    pass


def chromium(timeout):
    """The Chromium binary, installed with apt-get when missing."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if not shutil.which("apt-get"):
        raise Skip("no chromium and no apt-get to install it")
    prefix = []
    if os.geteuid() != 0:
        if not shutil.which("sudo") or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode:
            raise Skip("no chromium, and apt-get needs root (no password-less sudo)")
        prefix = ["sudo", "-n"]
    print("html_render: installing chromium with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            r = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=timeout * 10, env=env)
        except subprocess.TimeoutExpired:
            raise Skip(f"'{' '.join(cmd)}' took over {timeout * 10} s")
        if r.returncode:
            raise Skip(f"'{' '.join(cmd)}' failed: {r.stderr.strip()[-300:]}")
    path = shutil.which("chromium")
    if not path:
        raise Skip("apt-get installed chromium but it is not on PATH")
    return path


def run(cmd, cwd, what):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if r.returncode not in (0, 3):  # 3: `mlc check` with a failed budget
        sys.exit(f"html_render: {what} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def has_onnxruntime(python):
    if not python or not os.path.exists(python):
        return False
    return subprocess.run([python, "-c", "import onnxruntime"], capture_output=True).returncode == 0


def make_reports(mlc, work, python):
    """{kind: path of its HTML report}."""
    fx = os.path.join(REPO, "fixtures", "digits")
    env_db = os.path.join(work, "tuning.jsonl")
    os.environ["MLC_TUNING_DB"] = env_db
    reports = {}
    int8 = os.path.join(work, "cnn.int8.mlc")
    run([mlc, "compress", f"{fx}/cnn.onnx", "--int8", "--calib", f"{fx}/calib_cnn.npz",
         "--eval", f"{fx}/eval_cnn.npz", "--prune", "0.8", "--no-cache", "-o", int8], work, "mlc compress")
    reports["compress"] = int8 + ".report.html"
    tuned = os.path.join(work, "cnn.tuned.mlc")
    run([mlc, "tune", f"{fx}/cnn.onnx", "-o", tuned, "--budget", "2s", "--threads", "1",
         "--db", env_db], work, "mlc tune")
    reports["tune"] = tuned + ".tune.html"
    reports["check"] = os.path.join(work, "check.html")
    run([mlc, "check", int8, "--max-size", "10KB", "--max-latency-ms", "50", "--rounds", "5",
         "--threads", "1", "--min-accuracy", "0.9", "--eval", f"{fx}/eval_cnn.npz",
         "--html", reports["check"]], work, "mlc check")
    evil = os.path.join(work, EVIL)
    shutil.copyfile(f"{fx}/cnn.onnx", evil)
    reports["bench"] = os.path.join(work, "bench.html")
    cmd = [mlc, "bench", evil, int8, tuned, "--compare", "--profile", "--threads", "1",
           "--runs", "20", "--rounds", "4", "--html", reports["bench"]]
    if has_onnxruntime(python):
        cmd += ["--ort", "--python", python]
    else:
        print(f"html_render: bench report without ONNX Runtime ({python or 'no python'} lacks onnxruntime)")
    run(cmd, work, "mlc bench --compare")
    return reports


WRAPPER = """<!DOCTYPE html><html><body>
<iframe id="f" src="%s" width="1000" height="800"></iframe>
<pre id="out">pending</pre>
<script>
const f = document.getElementById('f');
f.onload = () => {
  const out = document.getElementById('out');
  try {
    const d = f.contentDocument;
    const plots = [...d.querySelectorAll('svg.plot')].map(svg => {
      const marks = [...svg.querySelectorAll('.mark')];
      const drawn = marks.filter(m => {
        const b = m.getBBox();
        return b.width > 0 && b.height > 0 && isFinite(b.x) && isFinite(b.y);
      }).length;
      const t = svg.querySelector('title');
      const box = svg.getBoundingClientRect();
      return {title: t ? t.textContent : null, marks: marks.length, drawn,
              width: box.width, height: box.height,
              ticks: svg.querySelectorAll('text').length};
    });
    out.textContent = JSON.stringify({
      title: d.title, plots,
      nodata: d.querySelectorAll('p.nodata').length,
      scripts: d.querySelectorAll('script').length,
      images: d.querySelectorAll('img, image').length,
      external: d.querySelectorAll('[src], [href]').length,
      markup_as_text: d.body.innerText.includes('onerror=alert(1)'),
    });
  } catch (e) {
    out.textContent = 'ERROR ' + e;
  }
};
</script></body></html>
"""


def render(browser, report, out_dir, timeout):
    """(measurements, console lines) of one report."""
    wrapper = report + ".render.html"
    with open(wrapper, "w") as f:
        f.write(WRAPPER % os.path.basename(report))
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=10000", f"--user-data-dir={tempfile.mkdtemp(prefix='mlc-chromium-')}"]
    try:
        r = subprocess.run(base + ["--dump-dom", "file://" + wrapper], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, [f"chromium took over {timeout} s"]
    console = [l for l in r.stderr.splitlines() if ":CONSOLE" in l]
    m = re.search(r'<pre id="out">(.*?)</pre>', r.stdout, re.S)
    if not m:
        return None, console + [f"no result in the dumped DOM (chromium exit {r.returncode})"]
    text = m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    if not text.startswith("{"):
        return None, console + [f"the wrapper's script said: {text}"]
    shot = os.path.join(out_dir, os.path.basename(report).replace(".html", ".png"))
    try:
        subprocess.run(base + ["--window-size=1000,2400", f"--screenshot={shot}", "file://" + report],
                       capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    return json.loads(text), console


def check(kind, m, console):
    problems = list(console)
    if m is None:
        return problems or ["not rendered"]
    if not m["plots"]:
        problems.append("no plot")
    for p in m["plots"]:
        if p["marks"] == 0 or p["drawn"] != p["marks"]:
            problems.append(f"plot '{p['title']}': {p['drawn']} of {p['marks']} marks drew")
        if not (p["width"] > 0 and p["height"] > 0):
            problems.append(f"plot '{p['title']}' has an empty box")
        if not p["title"]:
            problems.append("a plot without a title")
    for k in ("scripts", "images", "external"):
        if m[k]:
            problems.append(f"{m[k]} {k} in the report (it must be self-contained and inert)")
    if kind == "bench" and not m["markup_as_text"]:
        problems.append("the model named with markup does not show as text")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mlc", default=os.path.join(REPO, "target", "release", "mlc"))
    ap.add_argument("--out", default=os.path.join(REPO, "target", "tmp", "html_render"))
    ap.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
    ap.add_argument("--timeout", type=int, default=90, help="seconds per Chromium run")
    a = ap.parse_args()
    try:
        browser = chromium(a.timeout)
    except Skip as e:
        if os.environ.get("MLC_REQUIRE_CHROMIUM") == "1":
            sys.exit(f"html_render: MLC_REQUIRE_CHROMIUM=1 but {e}")
        print(f"html_render: skipped: {e}")
        return 0
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    reports = make_reports(os.path.abspath(a.mlc), a.out, a.python and os.path.abspath(a.python))
    failed = 0
    for kind, path in reports.items():
        m, console = render(browser, path, a.out, a.timeout)
        problems = check(kind, m, console)
        if problems:
            failed += 1
            print(f"FAIL {kind:8} {path}")
            for p in problems:
                print(f"     {p}")
        else:
            plots = ", ".join(f"{p['drawn']}" for p in m["plots"])
            print(f"ok   {kind:8} {len(m['plots'])} plots, marks drawn per plot: {plots}; "
                  f"{m['nodata']} 'nothing to plot' notes; no console message, script, image or external reference")
    print(f"html_render: {len(reports) - failed} of {len(reports)} reports render cleanly "
          f"(screenshots in {os.path.relpath(a.out, REPO)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
