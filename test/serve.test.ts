import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import type { Socket } from "bun";
import { openImage } from "../src/formats/detect.ts";
import type { Image } from "../src/formats/image.ts";
import { spawnSync } from "node:child_process";
import { imageExport, openImageVolume, volumeExport } from "../src/serve/image-export.ts";
import { openOverlay } from "../src/volume/overlay.ts";
import { MAX_PAYLOAD } from "../src/serve/nbd-protocol.ts";
import { type NbdServer, serveNbd } from "../src/serve/nbd-server.ts";
import { CLI, firstLine, fixture, manifest, peerTest, restoreToBuffer, restoredBytes, runCli, seededRandom, sha256, sha256File, tempDir, which } from "./helpers.ts";

// wire values from the NBD project's doc/proto.md
const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7, STRUCTURED_REPLY: 8 };
const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006, ERR_TOO_BIG: 0x80000009 };
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 };
const EPERM = 1;
const EINVAL = 22;
const FLAG_READ_ONLY = 1 << 1;
const WAIT_MS = 5000;

/** The fixtures a real client copies, with the volume they restore to. */
const SERVED = ["ext4.ext4-ptcl-img", "ntfs.ntfs-ptcl-img.aa", "ntfs.ntfsclone-img", "ext2-z0.partimg.000"];

function restoredSha256(name: string): string {
  const row = manifest().find((r) => r.files[0] === name);
  if (!row) throw new Error(`${name} is not in fixtures/manifest.tsv`);
  return row.restoredSha256;
}

/** partimage's own restore of ext2mv-z1-V1 (test/partimage.test.ts, fixtures/MAKE-extra.md) */
const MULTI_VOLUME_SHA256 = "a01316da3605c602db49ad4c024ef5d98d3f3513161e5f9feaf65e48400936d3";

/** The two-volume partimage set with each volume gunzipped: an uncompressed multi-volume image. */
function plainMultiVolumeSet(): string {
  const dir = tempDir();
  for (const n of ["000", "001"]) {
    fs.writeFileSync(path.join(dir, `mv.${n}`), Bun.gunzipSync(fs.readFileSync(fixture(`ext2mv-z1-V1.partimg.gz.${n}`))));
  }
  return path.join(dir, "mv.000");
}

function randomRanges(size: number, count: number, seed: number): [number, number][] {
  const random = seededRandom(seed);
  const ranges: [number, number][] = [[0, 512], [size - 1, 1], [size - 4096, 4096]];
  while (ranges.length < count) {
    const offset = Math.floor(random() * size);
    ranges.push([offset, Math.min(size - offset, 1 + Math.floor(random() * 300_000))]);
  }
  return ranges;
}

function serve(image: Image, where: { unix?: string } = {}): NbdServer {
  return serveNbd(imageExport(image, "vol"), { tcp: where.unix ? undefined : { hostname: "127.0.0.1", port: 0 }, unix: where.unix });
}

/** A minimal NBD client over loopback: bytes in a queue, reads that wait with a deadline. */
class TestClient {
  private buffer = new Uint8Array(1 << 16);
  private length = 0;
  private wake: (() => void) | undefined;
  private socket!: Socket<undefined>;
  closed = false;
  private cookie = 0n;

  static async connect(server: { port?: number; unix?: string }): Promise<TestClient> {
    const client = new TestClient();
    const handler = {
      data: (_s: Socket<undefined>, chunk: Uint8Array) => client.push(chunk),
      drain: () => client.wake?.(),
      close: () => {
        client.closed = true;
        client.wake?.();
      },
    };
    client.socket = server.unix ? await Bun.connect({ unix: server.unix, socket: handler }) : await Bun.connect({ hostname: "127.0.0.1", port: server.port!, socket: handler });
    return client;
  }

  private push(chunk: Uint8Array): void {
    if (this.length + chunk.length > this.buffer.length) {
      const bigger = new Uint8Array(Math.max(this.buffer.length * 2, this.length + chunk.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(chunk, this.length);
    this.length += chunk.length;
    this.wake?.();
  }

  /** Until data, drain or close arrives, or `ms` pass. */
  private nextEvent(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async waitFor(ready: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + WAIT_MS;
    while (!ready()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await this.nextEvent(left);
    }
  }

  async take(n: number): Promise<Uint8Array> {
    await this.waitFor(() => this.length >= n || this.closed, `${n} bytes`);
    if (this.length < n) throw new Error(`connection closed with ${this.length} of ${n} bytes`);
    const out = this.buffer.slice(0, n);
    this.buffer.copyWithin(0, n, this.length);
    this.length -= n;
    return out;
  }

  async send(bytes: Uint8Array): Promise<void> {
    const deadline = Date.now() + WAIT_MS;
    let sent = 0;
    while (sent < bytes.length) {
      const n = this.socket.write(bytes.subarray(sent));
      if (n < 0) throw new Error("socket closed");
      sent += n;
      if (sent === bytes.length) break;
      if (Date.now() > deadline) throw new Error("timed out sending");
      await this.nextEvent(deadline - Date.now());
    }
  }

  async waitClosed(): Promise<boolean> {
    await this.waitFor(() => this.closed, "the server to close").catch(() => {});
    return this.closed;
  }

  close(): void {
    this.socket.end();
  }

  // ---- handshake

  async greeting(clientFlags = 3): Promise<void> {
    const hello = dv(await this.take(18));
    expect(hello.getBigUint64(0)).toBe(NBDMAGIC);
    expect(hello.getBigUint64(8)).toBe(IHAVEOPT);
    expect(hello.getUint16(16) & 1).toBe(1);
    const flags = new Uint8Array(4);
    dv(flags).setUint32(0, clientFlags);
    await this.send(flags);
  }

  async option(option: number, data: Uint8Array = new Uint8Array(0)): Promise<void> {
    const head = new Uint8Array(16 + data.length);
    dv(head).setBigUint64(0, IHAVEOPT);
    dv(head).setUint32(8, option);
    dv(head).setUint32(12, data.length);
    head.set(data, 16);
    await this.send(head);
  }

  async optionReply(option: number): Promise<{ type: number; data: Uint8Array }> {
    const head = dv(await this.take(20));
    expect(head.getBigUint64(0)).toBe(OPTION_REPLY_MAGIC);
    expect(head.getUint32(8)).toBe(option);
    const length = head.getUint32(16);
    return { type: head.getUint32(12), data: await this.take(length) };
  }

  /** NBD_OPT_INFO or NBD_OPT_GO; the infos by type, or the error reply type. */
  async info(option: number, name: string, requests: number[] = []): Promise<{ final: number; infos: Map<number, DataView> }> {
    const nameBytes = new TextEncoder().encode(name);
    const data = new Uint8Array(6 + nameBytes.length + 2 * requests.length);
    dv(data).setUint32(0, nameBytes.length);
    data.set(nameBytes, 4);
    dv(data).setUint16(4 + nameBytes.length, requests.length);
    requests.forEach((r, i) => dv(data).setUint16(6 + nameBytes.length + 2 * i, r));
    await this.option(option, data);
    const infos = new Map<number, DataView>();
    for (let i = 0; i < 10; i++) {
      const reply = await this.optionReply(option);
      if (reply.type !== REP.INFO) return { final: reply.type, infos };
      infos.set(dv(reply.data).getUint16(0), dv(reply.data));
    }
    throw new Error("more than 10 info replies");
  }

  /** Handshake through NBD_OPT_GO; the export size and transmission flags. */
  async go(name = ""): Promise<{ size: number; flags: number }> {
    await this.greeting();
    const { final, infos } = await this.info(OPT.GO, name, [3]);
    expect(final).toBe(REP.ACK);
    const exportInfo = infos.get(0)!;
    return { size: Number(exportInfo.getBigUint64(2)), flags: exportInfo.getUint16(10) };
  }

  // ---- transmission

  request(type: number, offset: number, length: number, payload?: Uint8Array): { bytes: Uint8Array; cookie: bigint } {
    const bytes = new Uint8Array(28 + (payload?.length ?? 0));
    const cookie = ++this.cookie * 0x1_0001n;
    dv(bytes).setUint32(0, 0x25609513);
    dv(bytes).setUint16(6, type);
    dv(bytes).setBigUint64(8, cookie);
    dv(bytes).setBigUint64(16, BigInt(offset));
    dv(bytes).setUint32(24, length);
    if (payload) bytes.set(payload, 28);
    return { bytes, cookie };
  }

  async reply(cookie: bigint, dataLength: number): Promise<{ error: number; data: Uint8Array }> {
    const head = dv(await this.take(16));
    expect(head.getUint32(0)).toBe(0x67446698);
    expect(head.getBigUint64(8)).toBe(cookie);
    const error = head.getUint32(4);
    return { error, data: error === 0 ? await this.take(dataLength) : new Uint8Array(0) };
  }

  async command(type: number, offset: number, length: number, payload?: Uint8Array): Promise<{ error: number; data: Uint8Array }> {
    const { bytes, cookie } = this.request(type, offset, length, payload);
    await this.send(bytes);
    return this.reply(cookie, type === CMD.READ ? length : 0);
  }
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** Four clients at once, each reading random ranges (the same list, from its own start) and comparing them with `volume`. */
async function readInterleaved(server: { port?: number; unix?: string }, volume: Uint8Array, seed: number, whenConnected = () => {}): Promise<void> {
  const clients = await Promise.all([1, 2, 3, 4].map(() => TestClient.connect(server)));
  await Promise.all(clients.map((c) => c.go()));
  whenConnected();
  const ranges = randomRanges(volume.length, 30, seed);
  await Promise.all(
    clients.map(async (c, k) => {
      for (const [offset, length] of ranges.slice(k)) {
        const r = await c.command(CMD.READ, offset, length);
        expect(equalBytes(r.data, volume.subarray(offset, offset + length))).toBe(true);
      }
    }),
  );
  for (const c of clients) c.close();
}

describe("random access into ntfsclone and partimage images", () => {
  const cases: [string, () => string][] = [
    ["ntfsclone", () => fixture("ntfs.ntfsclone-img")],
    ["partimage, one volume", () => fixture("ext2-z0.partimg.000")],
    ["partimage, two uncompressed volumes", plainMultiVolumeSet],
  ];
  for (const [name, file] of cases) {
    test(`${name}: read of random ranges equals the restored volume`, () => {
      const input = file();
      const volume = restoredBytes(input);
      const image = openImage(input);
      try {
        expect(image.read).toBeDefined();
        for (const [offset, length] of randomRanges(volume.length, 300, 7)) {
          expect(equalBytes(image.read!(offset, length), volume.subarray(offset, offset + length))).toBe(true);
        }
        expect(sha256(image.read!(0, volume.length))).toBe(sha256(volume));
        expect(image.read!(volume.length - 10, 100).length).toBe(10);
      } finally {
        image.close();
      }
    });
  }

  test("the two-volume set reads across the volume boundary as partimage restores it", () => {
    const image = openImage(plainMultiVolumeSet());
    try {
      expect(sha256(image.read!(0, image.info.deviceSize))).toBe(MULTI_VOLUME_SHA256);
    } finally {
      image.close();
    }
  });

  test("ntfsclone read works after the data was streamed once (the index is built anew)", () => {
    const image = openImage(fixture("ntfs.ntfsclone-img"));
    try {
      const volume = restoreToBuffer(image);
      expect(equalBytes(image.read!(1 << 20, 70_000), volume.subarray(1 << 20, (1 << 20) + 70_000))).toBe(true);
    } finally {
      image.close();
    }
  });

  test("compressed images have no random access", () => {
    for (const name of ["ntfs.ntfsclone-img.gz", "ext2-z1.partimg.gz.000"]) {
      const image = openImage(fixture(name));
      expect(image.read).toBeUndefined();
      image.close();
    }
  });
});

describe("NBD server, spoken to by a client written here", () => {
  for (const name of SERVED) {
    test(`${name}: reads of random ranges equal the restored volume`, async () => {
      const volume = restoredBytes(fixture(name));
      expect(sha256(volume)).toBe(restoredSha256(name));
      const image = openImage(fixture(name));
      const server = serve(image);
      try {
        const client = await TestClient.connect(server);
        const { size, flags } = await client.go();
        expect(size).toBe(volume.length);
        expect(flags & FLAG_READ_ONLY).toBe(FLAG_READ_ONLY);
        for (const [offset, length] of randomRanges(size, 100, 11)) {
          const r = await client.command(CMD.READ, offset, length);
          expect(r.error).toBe(0);
          expect(equalBytes(r.data, volume.subarray(offset, offset + length))).toBe(true);
        }
        // the whole volume in one request: more than a socket buffer, so replies wait for drain
        const whole = await client.command(CMD.READ, 0, size);
        expect(sha256(whole.data)).toBe(restoredSha256(name));
        client.close();
      } finally {
        server.stop();
        image.close();
      }
    });
  }

  test("out-of-range reads, writes, trims and unknown commands get errors and the session goes on", async () => {
    const volume = restoredBytes(fixture("ext4.ext4-ptcl-img"));
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const server = serve(image);
    try {
      const client = await TestClient.connect(server);
      const { size } = await client.go();
      expect((await client.command(CMD.READ, size - 100, 101)).error).toBe(EINVAL);
      expect((await client.command(CMD.READ, size, 1)).error).toBe(EINVAL);
      expect((await client.command(CMD.READ, 2 ** 62, 512)).error).toBe(EINVAL);
      expect((await client.command(CMD.READ, 0, MAX_PAYLOAD + 1)).error).toBe(EINVAL);
      // the payload is read and dropped, so the next request is still understood
      expect((await client.command(CMD.WRITE, 0, 1 << 20, new Uint8Array(1 << 20).fill(0xaa))).error).toBe(EPERM);
      expect((await client.command(CMD.WRITE, 4096, 512, new Uint8Array(512))).error).toBe(EPERM);
      expect((await client.command(CMD.TRIM, 0, 4096)).error).toBe(EPERM);
      expect((await client.command(CMD.WRITE_ZEROES, 0, 4096)).error).toBe(EPERM);
      expect((await client.command(CMD.FLUSH, 0, 0)).error).toBe(0);
      expect((await client.command(99, 0, 0)).error).toBe(EINVAL);
      const after = await client.command(CMD.READ, 0, 8192);
      expect(after.error).toBe(0);
      expect(equalBytes(after.data, volume.subarray(0, 8192))).toBe(true);
      await client.send(client.request(CMD.DISC, 0, 0).bytes);
      expect(await client.waitClosed()).toBe(true);
      expect(equalBytes(image.read!(0, 8192), volume.subarray(0, 8192))).toBe(true);
    } finally {
      server.stop();
      image.close();
    }
  });

  test("pipelined requests are answered in order with their cookies", async () => {
    const volume = restoredBytes(fixture("ext4.ext4-ptcl-img"));
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const server = serve(image);
    try {
      const client = await TestClient.connect(server);
      await client.go();
      const ranges = randomRanges(volume.length, 40, 3);
      const requests = ranges.map(([offset, length]) => client.request(CMD.READ, offset, length));
      const write = client.request(CMD.WRITE, 0, 3000, new Uint8Array(3000));
      await client.send(Buffer.concat([...requests.slice(0, 20).map((r) => r.bytes), write.bytes, ...requests.slice(20).map((r) => r.bytes)]));
      for (let i = 0; i < ranges.length; i++) {
        if (i === 20) expect((await client.reply(write.cookie, 0)).error).toBe(EPERM);
        const [offset, length] = ranges[i]!;
        const r = await client.reply(requests[i]!.cookie, length);
        expect(r.error).toBe(0);
        expect(equalBytes(r.data, volume.subarray(offset, offset + length))).toBe(true);
      }
      client.close();
    } finally {
      server.stop();
      image.close();
    }
  });

  test("several clients at once, interleaved", async () => {
    const volume = restoredBytes(fixture("ntfs.ntfsclone-img"));
    const image = openImage(fixture("ntfs.ntfsclone-img"));
    const server = serve(image);
    try {
      await readInterleaved(server, volume, 5, () => expect(server.connections).toBe(4));
    } finally {
      server.stop();
      image.close();
    }
  });

  test("option haggling: LIST, INFO, unknown names, unsupported options, EXPORT_NAME, ABORT", async () => {
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const server = serve(image);
    try {
      const client = await TestClient.connect(server);
      // without NBD_FLAG_C_NO_ZEROES, so that EXPORT_NAME's reply has its 124 zero bytes
      await client.greeting(1);
      await client.option(OPT.LIST);
      const server1 = await client.optionReply(OPT.LIST);
      expect(server1.type).toBe(REP.SERVER);
      expect(new TextDecoder().decode(server1.data.subarray(4))).toBe("vol");
      expect((await client.optionReply(OPT.LIST)).type).toBe(REP.ACK);
      await client.option(OPT.LIST, new Uint8Array(3));
      expect((await client.optionReply(OPT.LIST)).type).toBe(REP.ERR_INVALID);
      await client.option(OPT.STRUCTURED_REPLY, new Uint8Array(1));
      expect((await client.optionReply(OPT.STRUCTURED_REPLY)).type).toBe(REP.ERR_INVALID);
      await client.option(4242);
      expect((await client.optionReply(4242)).type).toBe(REP.ERR_UNSUP);
      // option data past what the server holds is skipped, and haggling goes on after it
      await client.option(99, new Uint8Array(200_000).fill(0x49));
      expect((await client.optionReply(99)).type).toBe(REP.ERR_TOO_BIG);
      expect((await client.info(OPT.GO, "other")).final).toBe(REP.ERR_UNKNOWN);
      await client.option(OPT.INFO, new Uint8Array([0, 0, 0, 9, 1]));
      expect((await client.optionReply(OPT.INFO)).type).toBe(REP.ERR_INVALID);
      const info = await client.info(OPT.INFO, "vol", [1, 2, 3]);
      expect(info.final).toBe(REP.ACK);
      expect(Number(info.infos.get(0)!.getBigUint64(2))).toBe(image.info.deviceSize);
      const block = info.infos.get(3)!;
      expect([block.getUint32(2), block.getUint32(6), block.getUint32(10)]).toEqual([1, 4096, MAX_PAYLOAD]);
      const nameInfo = info.infos.get(1)!;
      expect(new TextDecoder().decode(new Uint8Array(nameInfo.buffer, nameInfo.byteOffset + 2, nameInfo.byteLength - 2))).toBe("vol");
      // still in haggling after INFO: EXPORT_NAME without NO_ZEROES ends it with 124 zero bytes
      await client.option(OPT.EXPORT_NAME, new TextEncoder().encode("vol"));
      const reply = await client.take(10 + 124);
      expect(Number(dv(reply).getBigUint64(0))).toBe(image.info.deviceSize);
      expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
      const r = await client.command(CMD.READ, 1024, 1024);
      expect(equalBytes(r.data, image.read!(1024, 1024))).toBe(true);
      client.close();

      const aborting = await TestClient.connect(server);
      await aborting.greeting();
      await aborting.option(OPT.ABORT);
      expect((await aborting.optionReply(OPT.ABORT)).type).toBe(REP.ACK);
      expect(await aborting.waitClosed()).toBe(true);

      const unknownName = await TestClient.connect(server);
      await unknownName.greeting();
      await unknownName.option(OPT.EXPORT_NAME, new TextEncoder().encode("other"));
      expect(await unknownName.waitClosed()).toBe(true);

      const badFlags = await TestClient.connect(server);
      await badFlags.greeting(1 << 5);
      expect(await badFlags.waitClosed()).toBe(true);
    } finally {
      server.stop();
      image.close();
    }
  });

  test("a port in use is refused with the reason", () => {
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const server = serve(image);
    try {
      expect(() => serveNbd(imageExport(image, "vol"), { tcp: { hostname: "127.0.0.1", port: server.port! } })).toThrow(`cannot listen on 127.0.0.1:${server.port}: the address is in use`);
    } finally {
      server.stop();
      image.close();
    }
  });

  test("a Unix socket serves the same bytes and is removed when the server stops", async () => {
    const socketPath = path.join(tempDir(), "nbd.sock");
    const image = openImage(fixture("ext2-z0.partimg.000"));
    const server = serve(image, { unix: socketPath });
    try {
      expect(fs.existsSync(socketPath)).toBe(true);
      const client = await TestClient.connect(server);
      const { size } = await client.go("vol");
      const r = await client.command(CMD.READ, size - 65536, 65536);
      expect(equalBytes(r.data, image.read!(size - 65536, 65536))).toBe(true);
      client.close();
    } finally {
      server.stop();
      image.close();
    }
    expect(fs.existsSync(socketPath)).toBe(false);
  });
});

/** Run a client tool with a deadline, without blocking the event loop the server runs on. */
async function runTool(argv: string[]): Promise<{ code: number | null; stderr: string }> {
  const proc = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  const code = await proc.exited;
  clearTimeout(timer);
  return { code, stderr: await new Response(proc.stderr).text() };
}

describe("NBD server, read by real clients", () => {
  const inputs: [string, () => string, () => string][] = [
    ...SERVED.map((name): [string, () => string, () => string] => [name, () => fixture(name), () => restoredSha256(name)]),
    ["two uncompressed partimage volumes", plainMultiVolumeSet, () => MULTI_VOLUME_SHA256],
  ];
  const clients: [string, (uri: string, out: string) => string[]][] = [
    ["nbdcopy", (uri, out) => ["nbdcopy", uri, out]],
    ["qemu-img", (uri, out) => ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out]],
  ];
  for (const [tool, argv] of clients) {
    for (const [name, input, want] of inputs) {
      peerTest(!which(tool) && `${tool} is not installed (apt: ${tool === "nbdcopy" ? "libnbd-bin" : "qemu-utils"})`)(`${tool} copies the export of ${name}; its sha256 is the restored volume's`, async () => {
        const image = openImage(input());
        const server = serve(image);
        try {
          const out = path.join(tempDir(), "copy.raw");
          const r = await runTool(argv(`nbd://127.0.0.1:${server.port}`, out));
          expect(r.stderr).toBe("");
          expect(r.code).toBe(0);
          expect(sha256File(out)).toBe(want());
        } finally {
          server.stop();
          image.close();
        }
      }, 40_000);
    }
  }

  peerTest(!which("nbdinfo") && "nbdinfo is not installed (apt: libnbd-bin)")("nbdinfo sees a read-only export with its size, over a Unix socket", async () => {
    const socketPath = path.join(tempDir(), "nbd.sock");
    const image = openImage(fixture("ntfs.ntfs-ptcl-img.aa"));
    const server = serve(image, { unix: socketPath });
    try {
      const proc = Bun.spawn(["nbdinfo", "--json", `nbd+unix:///?socket=${encodeURIComponent(socketPath)}`], { stdout: "pipe", stderr: "pipe" });
      const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
      const [json, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
      clearTimeout(timer);
      expect(code).toBe(0);
      const exp = JSON.parse(json).exports[0];
      expect(exp["export-size"]).toBe(image.info.deviceSize);
      expect(exp.is_read_only).toBe(true);
      expect(exp.can_multi_conn).toBe(true);
    } finally {
      server.stop();
      image.close();
    }
  }, 40_000);
});

describe("imgtool serve", () => {
  test("refuses an image compressed twice over (the seek index covers one layer), naming the decompressor", () => {
    const twice = path.join(tempDir(), "ext4.zst.gz");
    fs.writeFileSync(twice, Bun.gzipSync(new Uint8Array(Bun.spawnSync(["zstd", "-q", "-c", fixture("ext4.ext4-ptcl-img")]).stdout)));
    const r = runCli(["serve", twice, "--port", "0"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("compressed 2 times over");
    expect(r.stderr).toContain("gzip -d");
    expect(r.stderr).toContain("restore");
    expect(r.stdout.length).toBe(0);
  });

  test("refuses an image read from a pipe", () => {
    const r = runCli(["serve", "-", "--port", "0"], { stdinFile: fixture("ext4.ext4-ptcl-img") });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("pipe");
  });

  test("a bad image is one error line before anything listens", () => {
    const r = runCli(["serve", fixture("MAKE.md"), "--port", "0"]);
    expect(r.code).toBe(3);
    expect(r.stderr.trimEnd().split("\n").length).toBe(1);
    expect(r.stdout.length).toBe(0);
  });

  test("serves on a Unix socket, says how to connect, and stops cleanly on SIGINT", async () => {
    const socketPath = path.join(tempDir(), "cli.sock");
    const proc = Bun.spawn([process.execPath, CLI, "serve", fixture("ext4.ext4-ptcl-img"), "--socket", socketPath], { stdout: "pipe", stderr: "pipe" });
    const killer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    try {
      const reader = proc.stdout.getReader();
      const first = await reader.read();
      const line = new TextDecoder().decode(first.value);
      expect(line).toContain(`nbd+unix:///?socket=${socketPath}`);
      expect(line).toContain("nbd-client -unix");
      expect(line).not.toContain("nbd://");
      const client = await TestClient.connect({ unix: socketPath });
      const { size } = await client.go("ext4.ext4-ptcl-img");
      expect(size).toBe(8388608);
      client.close();
      proc.kill("SIGINT");
      expect(await proc.exited).toBe(0);
      expect(fs.existsSync(socketPath)).toBe(false);
    } finally {
      clearTimeout(killer);
      proc.kill("SIGKILL");
    }
  }, 30_000);

  test("listens on 127.0.0.1 unless told otherwise", async () => {
    const proc = Bun.spawn([process.execPath, CLI, "serve", fixture("ext4.ext4-ptcl-img"), "--port", "0"], { stdout: "pipe", stderr: "pipe" });
    const killer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    try {
      const line = await firstLine(proc.stdout);
      const m = /nbd:\/\/127\.0\.0\.1:(\d+)/.exec(line);
      expect(m).not.toBeNull();
      expect(line).toContain("nbdcopy nbd://127.0.0.1:");
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(0);
    } finally {
      clearTimeout(killer);
      proc.kill("SIGKILL");
    }
  }, 30_000);
});

// ---- structured replies, block status, overlays, limits (doc/proto.md)

const OPT_LIST_META_CONTEXT = 9;
const OPT_SET_META_CONTEXT = 10;
const REP_META_CONTEXT = 4;
const CMD_BLOCK_STATUS = 7;
const CMD_FLAG_FUA = 1;
const CMD_FLAG_REQ_ONE = 8;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
const CHUNK = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 32769, ERROR_OFFSET: 32770 };
const ENOSPC = 28;

/** The used and unused stretches of an image from its bitmap, block by block, neighbours merged. */
function bitmapMap(image: Image): { offset: number; length: number; data: boolean }[] {
  const { blockSize, totalBlocks, deviceSize } = image.info;
  const out: { offset: number; length: number; data: boolean }[] = [];
  // past the bitmap's last block (a volume not a whole number of them) is unused
  for (let b = 0; b < Math.ceil(deviceSize / blockSize); b++) {
    const data = b < totalBlocks && image.isUsed(b);
    const last = out[out.length - 1];
    const length = Math.min(blockSize, deviceSize - b * blockSize);
    if (last && last.data === data) last.length += length;
    else out.push({ offset: b * blockSize, length, data });
  }
  return out;
}

function metaContextData(name: string, queries: string[]): Uint8Array {
  const enc = new TextEncoder();
  const nameBytes = enc.encode(name);
  const q = queries.map((s) => enc.encode(s));
  const out = new Uint8Array(8 + nameBytes.length + q.reduce((n, b) => n + 4 + b.length, 0));
  const v = dv(out);
  v.setUint32(0, nameBytes.length);
  out.set(nameBytes, 4);
  v.setUint32(4 + nameBytes.length, q.length);
  let at = 8 + nameBytes.length;
  for (const b of q) {
    v.setUint32(at, b.length);
    out.set(b, at + 4);
    at += 4 + b.length;
  }
  return out;
}

interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Uint8Array;
}

async function readChunk(client: TestClient): Promise<Chunk> {
  const head = dv(await client.take(20));
  expect(head.getUint32(0)).toBe(STRUCTURED_REPLY_MAGIC);
  const length = head.getUint32(16);
  return { flags: head.getUint16(4), type: head.getUint16(6), cookie: head.getBigUint64(8), payload: await client.take(length) };
}

/** Every chunk of one structured reply, up to the one flagged DONE. */
async function readChunks(client: TestClient, cookie: bigint): Promise<Chunk[]> {
  const chunks: Chunk[] = [];
  for (;;) {
    const c = await readChunk(client);
    expect(c.cookie).toBe(cookie);
    chunks.push(c);
    if (c.flags & 1) return chunks;
  }
}

/** Handshake with structured replies and base:allocation. */
async function structuredGo(client: TestClient): Promise<number> {
  await client.greeting();
  await client.option(OPT.STRUCTURED_REPLY);
  expect((await client.optionReply(OPT.STRUCTURED_REPLY)).type).toBe(REP.ACK);
  await client.option(OPT_SET_META_CONTEXT, metaContextData("", ["base:allocation"]));
  const ctx = await client.optionReply(OPT_SET_META_CONTEXT);
  expect(ctx.type).toBe(REP_META_CONTEXT);
  expect(new TextDecoder().decode(ctx.data.subarray(4))).toBe("base:allocation");
  expect((await client.optionReply(OPT_SET_META_CONTEXT)).type).toBe(REP.ACK);
  const { final, infos } = await client.info(OPT.GO, "");
  expect(final).toBe(REP.ACK);
  expect(dv(ctx.data).getUint32(0)).toBe(1);
  return Number(infos.get(0)!.getBigUint64(2));
}

async function spawnTool(argv: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** `imgtool serve` in a child on a Unix socket, once it says it listens. */
async function serveCli(image: string, extra: string[] = []) {
  const socketPath = path.join(tempDir(), "s.sock");
  const proc = Bun.spawn([process.execPath, CLI, "serve", image, "--socket", socketPath, ...extra], { stdout: "pipe", stderr: "pipe" });
  const killer = setTimeout(() => proc.kill("SIGKILL"), 120_000);
  const line = await firstLine(proc.stdout);
  if (!line.startsWith("serving")) {
    clearTimeout(killer);
    throw new Error(`imgtool serve did not start: ${line}${await new Response(proc.stderr).text()}`);
  }
  return {
    proc,
    line,
    uri: `nbd+unix:///?socket=${encodeURIComponent(socketPath)}`,
    async stop(): Promise<number> {
      proc.kill("SIGINT");
      const code = await proc.exited;
      clearTimeout(killer);
      return code;
    },
  };
}

describe("imgtool serve: clients on threads of their own (--threads)", () => {
  for (const threads of ["0", "1", "2"]) {
    test(`--threads ${threads}: four clients at once, interleaved, each read what restore writes`, async () => {
      const name = "ntfs.ntfsclone-img";
      const volume = restoredBytes(fixture(name));
      const server = await serveCli(fixture(name), ["--threads", threads]);
      try {
        await readInterleaved({ unix: decodeURIComponent(server.uri.split("socket=")[1]!) }, volume, 7);
      } finally {
        expect(await server.stop()).toBe(0);
      }
    }, 60_000);
  }

  /** A zstd copy of the ext4 fixture in a directory bind-mounted read-only; `body` gets the image's path there. */
  async function withReadOnlyZstdImage(body: (image: string) => Promise<void>): Promise<void> {
    const dir = tempDir();
    const ro = tempDir();
    fs.writeFileSync(path.join(dir, "e.zst"), Bun.spawnSync(["zstd", "-q", "-c", fixture("ext4.ext4-ptcl-img")]).stdout);
    expect(spawnSync("mount", ["--bind", dir, ro]).status).toBe(0);
    try {
      expect(spawnSync("mount", ["-o", "remount,bind,ro", ro]).status).toBe(0);
      await body(path.join(ro, "e.zst"));
    } finally {
      spawnSync("umount", [ro]);
    }
  }

  /** `serve IMAGE --threads 2` with XDG_CACHE_HOME=cache: clients' reads checked, SIGINT ends it; its stderr. */
  async function serveOnThreads(image: string, cache: string): Promise<string> {
    const socketPath = path.join(tempDir(), "s.sock");
    const proc = Bun.spawn([process.execPath, CLI, "serve", image, "--socket", socketPath, "--threads", "2"], {
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, XDG_CACHE_HOME: cache },
    });
    try {
      const line = await firstLine(proc.stdout);
      expect(line).toStartWith("serving");
      await readInterleaved({ unix: socketPath }, restoredBytes(fixture("ext4.ext4-ptcl-img")), 9);
    } finally {
      proc.kill("SIGINT");
      expect(await proc.exited).toBe(0);
    }
    return new Response(proc.stderr).text();
  }

  peerTest((process.getuid?.() !== 0 || !which("zstd")) && "needs root (a read-only bind mount) and zstd")("a compressed image whose seek index can be kept in memory only (read-only directory and cache): served on one thread, with a line saying why", async () => {
    await withReadOnlyZstdImage(async (image) => {
      expect(await serveOnThreads(image, path.dirname(image))).toContain("imgtool: serving every client on this one thread: the serving threads could not open the image themselves (");
    });
  }, 60_000);

  peerTest((process.getuid?.() !== 0 || !which("zstd")) && "needs root (a read-only bind mount) and zstd")("a compressed image in a read-only directory: the serving threads find its seek index in XDG_CACHE_HOME, where the main thread wrote it", async () => {
    await withReadOnlyZstdImage(async (image) => {
      const cache = tempDir();
      expect(await serveOnThreads(image, cache)).toBe("");
      expect(fs.readdirSync(path.join(cache, "imgtool")).filter((f) => f.endsWith("e.zst.imgtool-index"))).toHaveLength(1);
    });
  }, 60_000);

  test("--threads takes a count from 0 to 64 (each thread opens the export again)", () => {
    for (const bad of ["65", "-1", "two"]) {
      const r = runCli(["serve", fixture("ext4.ext4-ptcl-img"), "--port", "0", "--threads", bad]);
      expect([r.code, r.stderr]).toEqual([2, `imgtool: --threads: not a count from 0 to 64: ${JSON.stringify(bad)}\n`]);
    }
  });

  peerTest(!which("python3") && "python3 is needed for the stalled client")("a client that never reads its replies holds only its thread: the next one is served, and SIGINT still ends the server", async () => {
    const name = "ntfs.ntfsclone-img";
    const volume = restoredBytes(fixture(name));
    const server = await serveCli(fixture(name), ["--threads", "1"]);
    const unix = decodeURIComponent(server.uri.split("socket=")[1]!);
    // 4 × 4 MiB asked for and never taken: the thread blocks in its send
    const stall = Bun.spawn(["python3", path.join(import.meta.dir, "stalled-nbd-clients.py"), unix, "1", String(4 << 20), "4", "30"], { stdout: "pipe", stderr: "pipe" });
    try {
      expect(await firstLine(stall.stdout)).toBe("stalled 1");
      const other = await TestClient.connect({ unix });
      await other.go();
      const r = await other.command(CMD.READ, 4096, 65536);
      expect(equalBytes(r.data, volume.subarray(4096, 4096 + 65536))).toBe(true);
      other.close();
    } finally {
      expect(await server.stop()).toBe(0);
      stall.kill("SIGKILL");
    }
  }, 60_000);
});

describe("structured replies and block status, spoken to by a client written here", () => {
  test("reads come as data and hole chunks that rebuild the volume; block status follows the bitmap", async () => {
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const volume = restoredBytes(fixture("ext4.ext4-ptcl-img"));
    const server = serve(image);
    try {
      const client = await TestClient.connect(server);
      const size = await structuredGo(client);
      expect(size).toBe(volume.length);
      // the whole volume: more than one piece, and its holes
      for (const [offset, length] of [[0, size], [300_000, 1_000_000], [4096, 4096], [size - 5000, 5000]] as [number, number][]) {
        const { bytes, cookie } = client.request(CMD.READ, offset, length);
        await client.send(bytes);
        const chunks = await readChunks(client, cookie);
        const rebuilt = new Uint8Array(length).fill(0x55);
        let covered = 0;
        for (const c of chunks) {
          const p = dv(c.payload);
          if (c.type === CHUNK.OFFSET_DATA) {
            const at = Number(p.getBigUint64(0)) - offset;
            rebuilt.set(c.payload.subarray(8), at);
            covered += c.payload.length - 8;
          } else if (c.type === CHUNK.OFFSET_HOLE) {
            const at = Number(p.getBigUint64(0)) - offset;
            const n = p.getUint32(8);
            rebuilt.fill(0, at, at + n);
            covered += n;
            // a hole only where the bitmap says unused
            expect(image.isUsed(Math.floor((offset + at) / 4096))).toBe(false);
          } else expect(c.type).toBe(CHUNK.NONE);
        }
        expect(covered).toBe(length);
        expect(equalBytes(rebuilt, volume.subarray(offset, offset + length))).toBe(true);
        if (length === size) expect(chunks.some((c) => c.type === CHUNK.OFFSET_HOLE)).toBe(true);
      }

      const status = async (offset: number, length: number, flags = 0) => {
        const { bytes, cookie } = client.request(CMD_BLOCK_STATUS, offset, length);
        dv(bytes).setUint16(4, flags);
        await client.send(bytes);
        const [c] = await readChunks(client, cookie);
        expect(c!.type).toBe(CHUNK.BLOCK_STATUS);
        const p = dv(c!.payload);
        expect(p.getUint32(0)).toBe(1);
        const out: { offset: number; length: number; data: boolean }[] = [];
        let at = offset;
        for (let i = 4; i < c!.payload.length; i += 8) {
          const state = p.getUint32(i + 4);
          expect([0, 3]).toContain(state);
          out.push({ offset: at, length: p.getUint32(i), data: state === 0 });
          at += p.getUint32(i);
        }
        return out;
      };
      expect(await status(0, size)).toEqual(bitmapMap(image));
      const one = await status(100, size - 100, CMD_FLAG_REQ_ONE);
      expect(one.length).toBe(1);
      expect(one[0]!.length).toBeGreaterThan(0);
      // past the end: an error chunk, and the session goes on
      const { bytes, cookie } = client.request(CMD_BLOCK_STATUS, size - 10, 11);
      await client.send(bytes);
      const [err] = await readChunks(client, cookie);
      expect(err!.type).toBe(CHUNK.ERROR);
      expect(dv(err!.payload).getUint32(0)).toBe(EINVAL);
      expect((await status(0, 4096)).length).toBe(1);
      client.close();
    } finally {
      server.stop();
      image.close();
    }
  });

  test("meta contexts: LIST names base:allocation; SET needs structured replies; no context, no block status", async () => {
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const server = serve(image);
    try {
      const client = await TestClient.connect(server);
      await client.greeting();
      await client.option(OPT_SET_META_CONTEXT, metaContextData("", ["base:allocation"]));
      expect((await client.optionReply(OPT_SET_META_CONTEXT)).type).toBe(REP.ERR_INVALID);
      for (const queries of [[], ["base:"], ["base:allocation", "qemu:dirty-bitmap:x"]]) {
        await client.option(OPT_LIST_META_CONTEXT, metaContextData("vol", queries));
        const r = await client.optionReply(OPT_LIST_META_CONTEXT);
        expect(r.type).toBe(REP_META_CONTEXT);
        expect(new TextDecoder().decode(r.data.subarray(4))).toBe("base:allocation");
        expect((await client.optionReply(OPT_LIST_META_CONTEXT)).type).toBe(REP.ACK);
      }
      await client.option(OPT_LIST_META_CONTEXT, metaContextData("", ["qemu:"]));
      expect((await client.optionReply(OPT_LIST_META_CONTEXT)).type).toBe(REP.ACK);
      await client.option(OPT_LIST_META_CONTEXT, metaContextData("other", []));
      expect((await client.optionReply(OPT_LIST_META_CONTEXT)).type).toBe(REP.ERR_UNKNOWN);
      // a query count past the data
      await client.option(OPT_LIST_META_CONTEXT, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 9]));
      expect((await client.optionReply(OPT_LIST_META_CONTEXT)).type).toBe(REP.ERR_INVALID);
      await client.option(OPT.STRUCTURED_REPLY);
      expect((await client.optionReply(OPT.STRUCTURED_REPLY)).type).toBe(REP.ACK);
      expect((await client.info(OPT.GO, "")).final).toBe(REP.ACK);
      const { bytes, cookie } = client.request(CMD_BLOCK_STATUS, 0, 4096);
      await client.send(bytes);
      const [err] = await readChunks(client, cookie);
      expect(err!.type).toBe(CHUNK.ERROR);
      expect(dv(err!.payload).getUint32(0)).toBe(EINVAL);
      client.close();
    } finally {
      server.stop();
      image.close();
    }
  });

  test("an overlay export takes writes, trims, zeroes and flushes; the image is untouched", async () => {
    const dir = tempDir();
    const file = path.join(dir, "ext4.ext4-ptcl-img");
    fs.copyFileSync(fixture("ext4.ext4-ptcl-img"), file);
    const imageSha = sha256File(file);
    const model = restoredBytes(file);
    const image = openImage(file);
    const base = openImageVolume(image, "vol");
    const overlay = openOverlay(path.join(dir, "o.ovl"), base, { inputs: [file] });
    const server = serveNbd(volumeExport(base, "vol", "test", overlay), { tcp: { hostname: "127.0.0.1", port: 0 } });
    try {
      const client = await TestClient.connect(server);
      const { size, flags } = await client.go();
      expect(flags & FLAG_READ_ONLY).toBe(0);
      const random = seededRandom(3);
      for (let i = 0; i < 60; i++) {
        const offset = Math.floor(random() * size);
        const length = Math.min(size - offset, 1 + Math.floor(random() * (i % 10 === 0 ? 2_000_000 : 20_000)));
        const kind = random();
        if (kind < 0.6) {
          const data = new Uint8Array(length).map(() => Math.floor(random() * 256));
          const { bytes, cookie } = client.request(CMD.WRITE, offset, length, data);
          if (i % 7 === 0) dv(bytes).setUint16(4, CMD_FLAG_FUA);
          await client.send(bytes);
          expect((await client.reply(cookie, 0)).error).toBe(0);
          model.set(data, offset);
        } else {
          expect((await client.command(kind < 0.8 ? CMD.TRIM : CMD.WRITE_ZEROES, offset, length)).error).toBe(0);
          model.fill(0, offset, offset + length);
        }
        if (i % 10 === 0) expect((await client.command(CMD.FLUSH, 0, 0)).error).toBe(0);
      }
      const whole = await client.command(CMD.READ, 0, size);
      expect(sha256(whole.data)).toBe(sha256(model));
      expect((await client.command(CMD.WRITE, size - 1, 2, new Uint8Array(2))).error).toBe(ENOSPC);
      expect((await client.command(CMD.WRITE_ZEROES, size, 1)).error).toBe(ENOSPC);
      client.close();
    } finally {
      server.stop();
      overlay.close();
    }
    expect(sha256File(file)).toBe(imageSha);
    const again = openOverlay(path.join(dir, "o.ovl"), openImageVolume(openImage(file), "vol"));
    expect(sha256(again.read(0, again.size))).toBe(sha256(model));
    again.close();
  });

  test("a full server refuses more clients with a reason, and takes them again once one goes", async () => {
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const server = serveNbd(imageExport(image, "vol"), { tcp: { hostname: "127.0.0.1", port: 0 }, maxConnections: 2 });
    try {
      const a = await TestClient.connect(server);
      await a.go();
      const b = await TestClient.connect(server);
      await b.go();
      const c = await TestClient.connect(server);
      await c.greeting();
      const refused = await c.info(OPT.GO, "");
      expect(refused.final).toBe(REP_ERR_POLICY);
      await c.option(OPT.LIST);
      const why = await c.optionReply(OPT.LIST);
      expect(new TextDecoder().decode(why.data)).toContain("2 clients already");
      c.close();
      // qemu prints what the server said; libnbd only in its debug output
      if (which("qemu-img")) {
        const r = await spawnTool(["qemu-img", "info", `nbd://127.0.0.1:${server.port}`]);
        expect(r.code).not.toBe(0);
        expect(r.stderr).toContain("server reported: the server has 2 clients already (imgtool serve --max-connections); try again later");
      }
      a.close();
      await a.waitClosed();
      for (let i = 0; i < 50 && server.connections > 1; i++) await Bun.sleep(20);
      const d = await TestClient.connect(server);
      expect((await d.go()).size).toBe(image.info.deviceSize);
      d.close();
      b.close();
    } finally {
      server.stop();
      image.close();
    }
  });
});

const REP_ERR_POLICY = 0x80000002;

describe("refused clients", () => {
  test("a refused client that stays connected is cut off after a while, and its place is free again", async () => {
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    const server = serveNbd(imageExport(image, "vol"), { tcp: { hostname: "127.0.0.1", port: 0 }, maxConnections: 1, refusedLingerMs: 300 });
    try {
      const a = await TestClient.connect(server);
      await a.go();
      const refused = await TestClient.connect(server);
      await refused.greeting();
      expect((await refused.info(OPT.GO, "")).final).toBe(REP_ERR_POLICY);
      // it says nothing more and keeps the socket open: the server closes it
      expect(await refused.waitClosed()).toBe(true);
      // with its place among the refused free again, the next one is told why too (not just closed)
      const next = await TestClient.connect(server);
      await next.greeting();
      expect((await next.info(OPT.GO, "")).final).toBe(REP_ERR_POLICY);
      next.close();
      a.close();
    } finally {
      server.stop();
      image.close();
    }
  });
});



describe("real clients: map, qcow2 copy, multi-conn, overlay through qemu-io, mkfs and fsck", () => {
  const MAPPED = ["ext4.ext4-ptcl-img", "ntfs.ntfs-ptcl-img.aa", "ntfs.ntfsclone-img", "ext2-z0.partimg.000"];
  for (const name of MAPPED) {
    peerTest(!which("nbdinfo") && "nbdinfo is not installed (apt: libnbd-bin)")(`nbdinfo --map of ${name}: used blocks are data, the rest hole,zero`, async () => {
      const image = openImage(fixture(name));
      const server = serve(image);
      try {
        const r = await spawnTool(["nbdinfo", "--map", "--json", `nbd://127.0.0.1:${server.port}`]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        const map = (JSON.parse(r.stdout) as { offset: number; length: number; type: number; description: string }[]).map((e) => ({
          offset: e.offset,
          length: e.length,
          data: e.type === 0,
          description: e.description,
        }));
        for (const e of map) expect(e.description).toBe(e.data ? "data" : "hole,zero");
        expect(map.map(({ description: _d, ...e }) => e)).toEqual(bitmapMap(image));
        expect(map.some((e) => !e.data)).toBe(true);
      } finally {
        server.stop();
        image.close();
      }
    }, 40_000);
  }

  peerTest(!which("qemu-img") && "qemu-img is not installed (apt: qemu-utils)")("qemu-img convert -O qcow2 of the export compares equal to restore, holding only the used data", async () => {
    const name = "ntfs.ntfs-ptcl-img.aa";
    const image = openImage(fixture(name));
    const server = serve(image);
    try {
      const dir = tempDir();
      const qcow2 = path.join(dir, "copy.qcow2");
      const r = await spawnTool(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", `nbd://127.0.0.1:${server.port}`, qcow2]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const raw = path.join(dir, "restored.raw");
      expect(runCli(["restore", fixture(name), "-o", raw]).code).toBe(0);
      const cmp = await spawnTool(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", qcow2, raw]);
      expect(cmp.stdout).toContain("Images are identical");
      expect(cmp.code).toBe(0);
      // allocated clusters of the copy: no more than the used data rounded to 64 KiB clusters
      const info = JSON.parse((await spawnTool(["qemu-img", "map", "--output=json", qcow2])).stdout) as { length: number; data: boolean }[];
      const copied = info.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
      const used = image.info.usedBlocks * image.info.blockSize;
      expect(copied).toBeLessThanOrEqual(Math.ceil(used / 65536) * 65536 + bitmapMap(image).length * 65536);
      expect(copied).toBeLessThan(image.info.deviceSize / 2);
    } finally {
      server.stop();
      image.close();
    }
  }, 60_000);

  peerTest(!which("nbdcopy") && "nbdcopy is not installed (apt: libnbd-bin)")("nbdcopy uses several connections at once (multi-conn) and copies the volume exactly", async () => {
    const name = "ext4.ext4-ptcl-img";
    const image = openImage(fixture(name));
    const server = serve(image);
    let most = 0;
    const sampler = setInterval(() => {
      most = Math.max(most, server.connections);
    }, 1);
    try {
      const out = path.join(tempDir(), "copy.raw");
      const r = await spawnTool(["nbdcopy", "--connections=4", "--request-size=65536", `nbd://127.0.0.1:${server.port}`, out]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(sha256File(out)).toBe(restoredSha256(name));
      expect(most).toBeGreaterThanOrEqual(2);
    } finally {
      clearInterval(sampler);
      server.stop();
      image.close();
    }
  }, 60_000);

  peerTest(!which("qemu-io") && "qemu-io is not installed (apt: qemu-utils)")("qemu-io writes a pattern through --overlay; a restarted server reads it back; restore --overlay has it; the image is unchanged", async () => {
    const dir = tempDir();
    const file = path.join(dir, "ntfs.ntfsclone-img");
    fs.copyFileSync(fixture("ntfs.ntfsclone-img"), file);
    const imageSha = sha256File(file);
    const overlayFile = path.join(dir, "changes.ovl");
    let server = await serveCli(file, ["--overlay", overlayFile]);
    expect(server.line).toContain(`writable, changes in ${overlayFile} (new)`);
    let r = await spawnTool(["qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 300k", "-c", "write -z 2M 64k", "-c", "flush", server.uri]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("wrote 307200/307200 bytes");
    expect(await server.stop()).toBe(0);

    server = await serveCli(file, ["--overlay", overlayFile]);
    expect(server.line).not.toContain("(new)");
    r = await spawnTool(["qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 1M 300k", "-c", "read -P 0 2M 64k", server.uri]);
    expect(r.stdout).not.toContain("Pattern verification failed");
    expect(r.stdout).toContain("read 307200/307200 bytes");
    expect(r.code).toBe(0);
    expect(await server.stop()).toBe(0);
    expect(sha256File(file)).toBe(imageSha);

    const out = path.join(dir, "merged.raw");
    expect(runCli(["restore", file, "--overlay", overlayFile, "-o", out]).code).toBe(0);
    const merged = fs.readFileSync(out);
    expect(merged.subarray(1 << 20, (1 << 20) + 300 * 1024).every((b) => b === 0xab)).toBe(true);
    expect(merged.subarray(2 << 20, (2 << 20) + 65536).every((b) => b === 0)).toBe(true);
    const original = restoredBytes(file);
    expect(equalBytes(merged.subarray(0, 1 << 20), original.subarray(0, 1 << 20))).toBe(true);
  }, 60_000);

  const nbdDevice = fs.existsSync("/sys/block/nbd0") && which("nbd-client") && process.getuid?.() === 0;
  const mkfsMissing = !which("mkfs.ext4") || !which("e2fsck") ? "e2fsprogs is not installed" : !nbdDevice && !which("nbdfuse") ? "neither the nbd module nor nbdfuse (apt: nbdfuse) is here" : !fs.existsSync("/dev/fuse") && !nbdDevice ? "/dev/fuse is missing" : undefined;
  peerTest(mkfsMissing)("mkfs.ext4 and e2fsck -fy on an overlay export (nbd-client where /dev/nbd0 exists, else nbdfuse)", async () => {
    const dir = tempDir();
    const file = path.join(dir, "ext4.ext4-ptcl-img");
    fs.copyFileSync(fixture("ext4.ext4-ptcl-img"), file);
    const imageSha = sha256File(file);
    const overlayFile = path.join(dir, "fs.ovl");
    const server = await serveCli(file, ["--overlay", overlayFile]);
    const mnt = path.join(dir, "mnt");
    fs.mkdirSync(mnt);
    let device: string;
    let fuse: ReturnType<typeof Bun.spawn> | undefined;
    if (nbdDevice) {
      device = "/dev/nbd0";
      expect((await spawnTool(["nbd-client", "-unix", decodeURIComponent(server.uri.split("socket=")[1]!), device])).code).toBe(0);
    } else {
      fuse = Bun.spawn(["nbdfuse", mnt, server.uri], { stdout: "ignore", stderr: "pipe" });
      device = path.join(mnt, "nbd");
      for (let i = 0; i < 200 && !fs.existsSync(device); i++) await Bun.sleep(25);
    }
    try {
      // the image's own file system first: fsck through the overlay finds it clean
      let r = await spawnTool(["e2fsck", "-fy", device]);
      expect(r.code).toBe(0);
      r = await spawnTool(["mkfs.ext4", "-F", "-q", "-L", "overlaid", "-U", "11111111-2222-3333-4444-555555555555", device]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      r = await spawnTool(["e2fsck", "-fy", device]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("overlaid");
    } finally {
      if (nbdDevice) await spawnTool(["nbd-client", "-d", device]);
      else {
        spawnSync("fusermount3", ["-u", mnt]);
        await fuse?.exited;
      }
    }
    expect(await server.stop()).toBe(0);
    expect(sha256File(file)).toBe(imageSha);
    // the new file system is in the overlay, and restore --overlay writes it
    const out = path.join(dir, "merged.raw");
    expect(runCli(["restore", file, "--overlay", overlayFile, "-o", out]).code).toBe(0);
    const r = await spawnTool(["e2fsck", "-fn", out]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("overlaid");
  }, 120_000);

  peerTest(!which("python3") && "python3 is needed for the stalled clients")("150 clients asking for 4 × 4 MiB and never reading: the server's memory stays bounded and comes back", async () => {
    // a volume that is nearly all data: zeros the server never writes cost no memory and would hide a leak
    const server = await serveCli(fixture("ntfs.ntfsclone-img"), ["--max-connections", "200"]);
    const pid = server.proc.pid;
    const memory = (field: "VmRSS" | "VmHWM") => Number(new RegExp(`${field}:\\s*(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
    const before = memory("VmRSS");
    const stall = Bun.spawn(["python3", path.join(import.meta.dir, "stalled-nbd-clients.py"), decodeURIComponent(server.uri.split("socket=")[1]!), "150", String(4 << 20), "4", "3"], { stdout: "pipe", stderr: "pipe" });
    try {
      const reader = stall.stdout.getReader();
      let text = "";
      const until = async (word: string) => {
        while (!text.includes(word)) {
          const { value, done } = await reader.read();
          if (done) break;
          text += new TextDecoder().decode(value);
        }
      };
      await until("stalled 150\n");
      await Bun.sleep(1500);
      expect(text).toContain("stalled 150");
      const peak = memory("VmHWM");
      // 150 whole 4 MiB replies would be 600 MiB (the server before pieces took 360 MiB more); a piece each is 150 × 256 KiB
      console.log(`stalled clients: RSS before ${(before / 2 ** 20).toFixed(0)} MiB, peak ${(peak / 2 ** 20).toFixed(0)} MiB`);
      expect(peak - before).toBeLessThan(120 * 2 ** 20);
      await until("closed");
      expect(text).toContain("closed");
      await Bun.sleep(2000);
      const after = memory("VmRSS");
      console.log(`stalled clients: RSS after they went ${(after / 2 ** 20).toFixed(0)} MiB`);
      expect(after - before).toBeLessThan(40 * 2 ** 20);
    } finally {
      stall.kill("SIGKILL");
      expect(await server.stop()).toBe(0);
    }
  }, 60_000);
});
