import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import type { Socket } from "bun";
import { openImage } from "../src/formats/detect.ts";
import type { Image } from "../src/formats/image.ts";
import { imageExport } from "../src/serve/image-export.ts";
import { MAX_PAYLOAD, type NbdServer, serveNbd } from "../src/serve/nbd.ts";
import { CLI, fixture, manifest, restoreToBuffer, runCli, sha256, sha256File, tempDir, which } from "./helpers.ts";

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

function restored(file: string): Uint8Array {
  const image = openImage(file);
  try {
    return restoreToBuffer(image);
  } finally {
    image.close();
  }
}

/** mulberry32: the same "random" ranges on every run */
function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
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

describe("random access into ntfsclone and partimage images", () => {
  const cases: [string, () => string][] = [
    ["ntfsclone", () => fixture("ntfs.ntfsclone-img")],
    ["partimage, one volume", () => fixture("ext2-z0.partimg.000")],
    ["partimage, two uncompressed volumes", plainMultiVolumeSet],
  ];
  for (const [name, file] of cases) {
    test(`${name}: read of random ranges equals the restored volume`, () => {
      const input = file();
      const volume = restored(input);
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
      const volume = restored(fixture(name));
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
    const volume = restored(fixture("ext4.ext4-ptcl-img"));
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
    const volume = restored(fixture("ext4.ext4-ptcl-img"));
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
    const volume = restored(fixture("ntfs.ntfsclone-img"));
    const image = openImage(fixture("ntfs.ntfsclone-img"));
    const server = serve(image);
    try {
      const clients = await Promise.all([1, 2, 3, 4].map(() => TestClient.connect(server)));
      await Promise.all(clients.map((c) => c.go()));
      expect(server.connections).toBe(4);
      const ranges = randomRanges(volume.length, 30, 5);
      await Promise.all(
        clients.map(async (c, k) => {
          for (const [offset, length] of ranges.slice(k)) {
            const r = await c.command(CMD.READ, offset, length);
            expect(equalBytes(r.data, volume.subarray(offset, offset + length))).toBe(true);
          }
        }),
      );
      for (const c of clients) c.close();
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
      test(`${tool} copies the export of ${name}; its sha256 is the restored volume's`, async () => {
        if (!which(tool)) {
          console.log(`skipped: ${tool} is not installed (apt: ${tool === "nbdcopy" ? "libnbd-bin" : "qemu-utils"})`);
          return;
        }
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

  test("nbdinfo sees a read-only export with its size, over a Unix socket", async () => {
    if (!which("nbdinfo")) {
      console.log("skipped: nbdinfo is not installed (apt: libnbd-bin)");
      return;
    }
    const socketPath = path.join(tempDir(), "nbd.sock");
    const image = openImage(fixture("ntfs.ntfs-ptcl-img.aa"));
    const server = serve(image, { unix: socketPath });
    try {
      const proc = Bun.spawn(["nbdinfo", "--json", `nbd+unix:///?socket=${socketPath}`], { stdout: "pipe", stderr: "pipe" });
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
  test("refuses a compressed image, naming the decompressor", () => {
    const r = runCli(["serve", fixture("ntfs.ntfs-ptcl-img.zst"), "--port", "0"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("zstd -d");
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
      const line = new TextDecoder().decode((await proc.stdout.getReader().read()).value);
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
