// Opens a DHAT profile in valgrind's viewer, dh_view.html, the way a person
// does (its Load button's file input), inside jsdom, and prints what the
// page then shows as one JSON object: {title, errors, metrics, views}.
// `views` maps each sort metric named on the command line to the text of
// the tree the page displays for it.
//
// Usage: node load.js DH_VIEW_HTML PROFILE [METRIC_LABEL...]
"use strict";
const fs = require("fs");
const path = require("path");
const { JSDOM, VirtualConsole } = require("jsdom");

async function main() {
  const [viewer, profile, ...metrics] = process.argv.slice(2);
  if (!viewer || !profile) {
    throw new Error("usage: node load.js DH_VIEW_HTML PROFILE [METRIC_LABEL...]");
  }
  const pageErrors = [];
  const vc = new VirtualConsole();
  vc.on("jsdomError", (e) => pageErrors.push(String(e.message || e)));
  vc.on("error", (...a) => pageErrors.push(a.join(" ")));
  const dom = await JSDOM.fromFile(viewer, {
    runScripts: "dangerously",
    resources: "usable",
    pretendToBeVisual: true,
    virtualConsole: vc,
  });
  const w = dom.window;
  await new Promise((ok) => w.addEventListener("load", ok));
  const doc = w.document;
  const input = doc.querySelector("input[type=file]");
  if (!input) throw new Error("the viewer made no file input: " + doc.body.textContent);
  const file = new w.File([fs.readFileSync(profile, "utf8")], path.basename(profile));
  Object.defineProperty(input, "files", { value: [file] });
  input.dispatchEvent(new w.Event("change"));
  // The file is read asynchronously; the tree appears as a <pre>.
  for (let i = 0; i < 600 && !doc.querySelector("pre") && !doc.querySelector(".error"); i++) {
    await new Promise((ok) => setTimeout(ok, 50));
  }
  const select = doc.querySelector("select");
  const labels = [...select.options].map((o) => o.textContent);
  const views = {};
  for (const m of metrics) {
    const i = labels.indexOf(m);
    if (i < 0) throw new Error(`no sort metric "${m}" in ${JSON.stringify(labels)}`);
    select.selectedIndex = i;
    select.dispatchEvent(new w.Event("change"));
    const pre = doc.querySelector("pre");
    views[m] = pre ? pre.textContent : "";
  }
  const errors = [...doc.querySelectorAll(".error")].map((e) => e.textContent).concat(pageErrors);
  process.stdout.write(JSON.stringify({ title: doc.title, errors, metrics: labels, views }) + "\n");
  w.close();
}

main().catch((e) => {
  process.stderr.write(`load.js: ${e.stack || e}\n`);
  process.exit(1);
});
