// Preloaded by bunfig.toml before every test file: hooks here run once for the whole run.
import { afterAll } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { useCacheDirectory } from "../src/source/seek-index/index-file.ts";
import { removeScratch, tempDir } from "./helpers.ts";

// The run sets what the tests and the tools they start depend on, rather than taking the caller's:
// files made with the modes the tests expect, peer tools' messages in one language, and index
// caches in the run's own scratch (not the caller's ~/.cache, which may be absent or not writable).
process.umask(0o022);
process.env.LC_ALL = "C.UTF-8";
process.env.LANGUAGE = "";
const home = tempDir();
fs.mkdirSync(path.join(home, ".cache"));
process.env.HOME = home;
process.env.XDG_CACHE_HOME = path.join(home, ".cache");
// the library in this process: the CLI tells it the cache directory from XDG_CACHE_HOME, tests likewise
useCacheDirectory(path.join(home, ".cache"));

// the run's scratch can hold gigabytes of restored disks: on a busy disk removing it outlasts the 60 s test timeout
afterAll(removeScratch, 10 * 60 * 1000);
