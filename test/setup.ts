// Preloaded by bunfig.toml before every test file: hooks here run once for the whole run.
import { afterAll } from "bun:test";
import { removeScratch } from "./helpers.ts";

afterAll(removeScratch);
