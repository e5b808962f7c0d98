// The command line checked against a command's citty `args` before it runs: citty itself takes any
// option it does not know, and reads `--flag=no` as true and `-o --force` as the output "--force".
import type { ArgsDef, CommandDef, Resolvable } from "citty";

interface Option {
  /** as the user types it: --output, -o, --no-verify */
  spelling: string;
  /** the option it stands for, as --help names it */
  canonical: string;
  takesValue: boolean;
  /** an accepted spelling --help does not show (--o for -o): never suggested */
  hidden?: boolean;
}

/** Every way a command's options may be written, aliases and --no- forms of yes/no options included. */
function spellings(args: ArgsDef): Option[] {
  const out: Option[] = [];
  for (const [name, def] of Object.entries(args)) {
    if (def.type === "positional") continue;
    const takesValue = def.type === "string" || def.type === "enum";
    const canonical = `--${name}`;
    const alias = "alias" in def ? def.alias : undefined;
    const aliases = alias === undefined ? [] : Array.isArray(alias) ? alias : [alias];
    for (const n of [name, ...aliases]) {
      // citty (node:util parseArgs) takes a one-letter name after one dash or two
      if (n.length === 1) out.push({ spelling: `-${n}`, canonical, takesValue });
      out.push({ spelling: `--${n}`, canonical, takesValue, hidden: n.length === 1 });
      if (def.type === "boolean" && n.length > 1) out.push({ spelling: `--no-${n}`, canonical, takesValue: false });
    }
  }
  return out;
}

/** Edit distance, for naming the option a typo was meant to be. */
function distance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = row;
  }
  return previous[b.length]!;
}

/** The option a mistyped one was most likely meant to be: written with as many dashes, one it begins, else the closest. */
function nearest(typed: string, options: Option[]): string | undefined {
  const long = typed.startsWith("--");
  const shown = options.filter((o) => !o.hidden);
  const sameKind = shown.filter((o) => o.spelling.startsWith("--") === long);
  const candidates = sameKind.length > 0 ? sameKind : shown;
  const lower = typed.toLowerCase();
  const extended = candidates.filter((o) => o.spelling.startsWith(lower) && o.spelling.length > lower.length);
  if (long && extended.length > 0) return extended.reduce((a, b) => (b.spelling.length < a.spelling.length ? b : a)).spelling;
  let best: { spelling: string; score: number } | undefined;
  for (const o of candidates) {
    const score = distance(lower, o.spelling.toLowerCase());
    if (!best || score < best.score) best = { spelling: o.spelling, score };
  }
  return best?.spelling;
}

function unknown(typed: string, options: Option[]): string {
  const guess = nearest(typed, options);
  return `unknown option ${typed}${guess ? ` (did you mean ${guess}?)` : ""}`;
}

/**
 * A value given as the next word: present, and not another option. `-` alone (stdin, stdout), a
 * negative number (no option is a digit) and a quoted empty word are values, left to the command
 * to judge (restore says what an empty -o "" is).
 */
function missingValue(next: string | undefined): boolean {
  return next === undefined || (next.startsWith("-") && next !== "-" && !/^-\d/.test(next));
}

/**
 * What is wrong with `argv` (the words after the command's name) for a command taking `args`: an
 * unknown option, an option without its value, a yes/no option given a value citty would misread;
 * undefined when nothing is. Everything after `--` is a positional argument.
 */
export function optionProblem(args: ArgsDef, argv: string[]): string | undefined {
  const options = spellings(args);
  const find = (spelling: string) => options.find((o) => o.spelling === spelling);
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === "--") return undefined;
    if (word === "-" || !word.startsWith("-")) continue;
    if (word.startsWith("--")) {
      const eq = word.indexOf("=");
      const spelling = eq < 0 ? word : word.slice(0, eq);
      const option = find(spelling);
      if (!option) return unknown(spelling, options);
      if (eq >= 0) {
        const value = word.slice(eq + 1);
        if (option.takesValue) {
          if (value === "") return `option ${spelling} needs a value`;
          continue;
        }
        // citty reads any value but "false" as true
        if (spelling.startsWith("--no-") || (value !== "true" && value !== "false")) {
          return `option ${spelling} takes no value (${option.canonical} or --no-${option.canonical.slice(2)})`;
        }
        continue;
      }
      if (option.takesValue) {
        if (missingValue(argv[i + 1])) return `option ${spelling} needs a value${argv[i + 1] === undefined ? "" : ` (got ${argv[i + 1]}; write ${spelling}=VALUE for a value that starts with -)`}`;
        i++;
      }
      continue;
    }
    // one dash: letters grouped (-lR), the last may take a value, in the same word (-oOUT) or the next
    const letters = word.slice(1);
    for (let j = 0; j < letters.length; j++) {
      const spelling = `-${letters[j]}`;
      const option = find(spelling);
      if (!option) return unknown(spelling, options);
      if (!option.takesValue) {
        if (letters[j + 1] === "=") return `option ${spelling} takes no value (${option.canonical} or --no-${option.canonical.slice(2)})`;
        continue;
      }
      if (j + 1 < letters.length) break;
      if (missingValue(argv[i + 1])) return `option ${spelling} needs a value${argv[i + 1] === undefined ? "" : ` (got ${argv[i + 1]}; write ${option.canonical}=VALUE for a value that starts with -)`}`;
      i++;
    }
  }
  return undefined;
}

const resolve = async <T>(value: Resolvable<T>): Promise<T> => (typeof value === "function" ? await (value as () => T | Promise<T>)() : await value);

/**
 * What is wrong with a whole command line (`imgtool COMMAND ...`), said as the one line to print
 * (pointing at the command's --help); undefined when nothing is, or when the command is unknown
 * (citty says so).
 */
export async function commandLineProblem(main: CommandDef, rawArgs: string[]): Promise<string | undefined> {
  const at = rawArgs.findIndex((word) => !word.startsWith("-") || word === "-");
  const name = at < 0 ? undefined : rawArgs[at]!;
  const commands: Record<string, Resolvable<CommandDef>> = await resolve(main.subCommands ?? {});
  if (name === undefined || !(name in commands)) return undefined;
  const help = `(see: imgtool ${name} --help)`;
  // --debug is read wherever it is; any other option before the command would be dropped
  const early = rawArgs.slice(0, at).find((word) => word !== "--debug");
  if (early !== undefined) return `${early} comes before the command: options go after it ${help}`;
  const command: CommandDef = await resolve(commands[name]!);
  const problem = optionProblem(await resolve(command.args ?? {}), rawArgs.slice(at + 1));
  return problem && `${problem} ${help}`;
}
