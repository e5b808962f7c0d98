import fs from "node:fs";
import path from "node:path";
import { closingWith, type Volume } from "../volume/volume.ts";
import { DiskInput } from "./disk-input.ts";
import { ImageInput } from "./image-input.ts";
import type { Input } from "./input.ts";
import { type InputOptions, openInput } from "./open-input.ts";

/**
 * What serve, mount and ls/get/extract read at any offset: any input (an image through its seek
 * index, a volume, a disk, one partition) as one Volume, with what an export or a mount is named after.
 */
export interface InputVolume {
  volume: Volume;
  input: Input;
  /** the input's own name, for a default export or file name */
  baseName: string;
  /** what it is, for NBD_INFO_DESCRIPTION: "partclone image of EXT4", "disk sda" */
  description: string;
  /** the files read (an overlay must not be one of them) */
  inputs: readonly string[];
  /** the path a mount is named after and takes its mtime from */
  source: string;
  mtimeMs: number;
  /** closes the volume and the input */
  close(): void;
}

export function openInputVolume(spec: string, options: InputOptions = {}): InputVolume {
  return inputVolume(openInput(spec, { ...options, randomAccess: true }), spec);
}

/** The input (opened with randomAccess) read at random; closing the result closes the input. */
export function inputVolume(input: Input, spec: string): InputVolume {
  try {
    const inner = input.openVolume();
    const volume = closingWith(inner, () => {
      inner.close();
      input.close();
    });
    const source = path.resolve(input instanceof DiskInput ? input.path : input instanceof ImageInput ? (input.image.info.pieces[0] ?? spec) : input.files[0]!);
    return {
      volume,
      input,
      baseName: baseNameOf(input),
      description: descriptionOf(input),
      inputs: input.files,
      source,
      mtimeMs: fs.statSync(source).mtimeMs,
      close: () => volume.close(),
    };
  } catch (e) {
    input.close();
    throw e;
  }
}

function baseNameOf(input: Input): string {
  if (input instanceof ImageInput) return input.baseName();
  if (input instanceof DiskInput) return `${path.basename(input.path)}${input.partitionName !== undefined ? `@${input.partitionName}` : ""}`;
  return path.basename(input.name);
}

function descriptionOf(input: Input): string {
  const facts = input.describe();
  if (facts.kind === "image") return `${facts.image.format} image of ${facts.image.fsType}`;
  if (facts.kind === "volume") return `volume of ${facts.content}`;
  const disk = input instanceof DiskInput ? input.span.layout.name : input.name;
  const p = input instanceof DiskInput ? input.span.parts.find((x) => x.kind === "partition") : undefined;
  return facts.kind === "partition" && p?.kind === "partition" ? `partition ${p.partition.name} of ${disk}` : `disk ${disk}`;
}
