// The real version pairs from the npm registry that the corpus and upload benchmarks use.

/** [label, package, old version, new version, path inside the package] */
export const PAIRS = [
  ["react-dom min (18.2.0 -> 18.3.1)", "react-dom", "18.2.0", "18.3.1", "umd/react-dom.production.min.js"],
  ["vue global prod (3.4.0 -> 3.4.5)", "vue", "3.4.0", "3.4.5", "dist/vue.global.prod.js"],
  ["three min (0.159 -> 0.160)", "three", "0.159.0", "0.160.0", "build/three.module.min.js"],
  ["three min (0.155 -> 0.160, 5 minors)", "three", "0.155.0", "0.160.0", "build/three.module.min.js"],
  ["pdf.worker min (4.0.269 -> 4.0.379)", "pdfjs-dist", "4.0.269", "4.0.379", "build/pdf.worker.min.mjs"],
  ["monaco editor.main (0.44 -> 0.45)", "monaco-editor", "0.44.0", "0.45.0", "min/vs/editor/editor.main.js"],
  ["typescript.js unminified (5.3.2 -> 5.3.3)", "typescript", "5.3.2", "5.3.3", "lib/typescript.js"],
  ["lodash.js unminified (4.17.20 -> 4.17.21)", "lodash", "4.17.20", "4.17.21", "lodash.js"],
  ["esbuild.wasm (0.19.10 -> 0.19.11)", "esbuild-wasm", "0.19.10", "0.19.11", "esbuild.wasm"],
  ["esbuild.wasm (0.27.2 -> 0.27.3)", "esbuild-wasm", "0.27.2", "0.27.3", "esbuild.wasm"],
  ["sql-wasm.wasm (1.10.2 -> 1.10.3)", "sql.js", "1.10.2", "1.10.3", "dist/sql-wasm.wasm"],
  ["swc wasm-web_bg.wasm (1.3.100 -> 1.3.102)", "@swc/wasm-web", "1.3.100", "1.3.102", "wasm-web_bg.wasm"],
];
