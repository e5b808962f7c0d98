// libc calls for threads and signals: a connected socket served with blocking calls on a thread of
// its own, a thread's scheduling priority, default signal actions.
import { ptr } from "bun:ffi";
import { EINTR, lastErrno, libc, libcError } from "./libc.ts";

// x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) of calls glibc 2.36 does not wrap
const SYS_gettid = 186;
const SYS_getpriority = 140;
const SYS_setpriority = 141;
const PRIO_PROCESS = 0;

/** struct sigaction of glibc on x86_64: handler, 128-byte mask, flags, restorer */
const SIGACTION_SIZE = 152;

/**
 * Put the default action back for `signals` (a handler of the runtime's, such as the one Bun
 * installs for SIGINT on a terminal, is set aside); the function returned puts the old ones back.
 */
export function defaultSignalActions(signals: number[]): () => void {
  const saved = signals.map((signal) => {
    const old = new Uint8Array(SIGACTION_SIZE);
    // all zeros: SIG_DFL, empty mask, no flags
    libc().sigaction(signal, new Uint8Array(SIGACTION_SIZE), old);
    return { signal, old };
  });
  return () => {
    for (const { signal, old } of saved) libc().sigaction(signal, old, null);
  };
}

const MSG_NOSIGNAL = 0x4000;
const SHUT_RDWR = 2;
/** struct msghdr (sys/socket.h, x86_64): name, namelen, iov, iovlen, control, controllen, flags */
const MSGHDR_SIZE = 56;
const MAX_IOV = 64;

/** A second descriptor of an open socket (the connection lives while either is open). */
export function dupFd(fd: number): number {
  const copy = libc().dup(fd);
  if (copy < 0) throw libcError("dup", Buffer.from(String(fd)));
  return copy;
}

/** Blocking reads into `into`: bytes read, 0 at the peer's end, -errno on failure. */
export function recvInto(fd: number, into: Uint8Array): number {
  for (;;) {
    const n = Number(libc().recv(fd, ptr(into), into.length, 0));
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno !== EINTR) return -errno;
  }
}

/**
 * Sends all of `parts` in order with as few system calls as the kernel allows (one sendmsg for
 * all of them when it takes them), never raising SIGPIPE; false when the peer is gone.
 */
export class SocketSender {
  private readonly header = new Uint8Array(MSGHDR_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly iov = new BigUint64Array(2 * MAX_IOV);

  constructor(private readonly fd: number) {
    this.headerView.setBigUint64(16, BigInt(ptr(this.iov)), true);
  }

  send(parts: Uint8Array[]): boolean {
    let first = 0;
    let skip = 0;
    while (first < parts.length) {
      let count = 0;
      for (let i = first; i < parts.length && count < MAX_IOV; i++) {
        const part = i === first ? parts[i]!.subarray(skip) : parts[i]!;
        if (part.length === 0) continue;
        this.iov[2 * count] = BigInt(ptr(part));
        this.iov[2 * count + 1] = BigInt(part.length);
        count++;
      }
      if (count === 0) return true;
      this.headerView.setBigUint64(24, BigInt(count), true);
      let n = Number(libc().sendmsg(this.fd, ptr(this.header), MSG_NOSIGNAL));
      if (n < 0) {
        if (lastErrno() === EINTR) continue;
        return false;
      }
      // step past what was taken
      while (first < parts.length && n >= parts[first]!.length - skip) {
        n -= parts[first]!.length - skip;
        first++;
        skip = 0;
      }
      skip += n;
    }
    return true;
  }
}

/**
 * Lower the calling thread's scheduling priority by `steps` nice levels from where it is (Linux
 * keeps a nice value per thread), to 19 at most: a process the user started niced stays below it.
 * Best effort: where the kernel refuses, the thread keeps its priority.
 */
export function lowerThreadPriority(steps: number): void {
  const tid = Number(libc().syscall(SYS_gettid, 0, 0, 0, 0, 0, 0));
  // the system call returns 20 - nice (1 to 40), so that no priority reads as an error
  const got = Number(libc().syscall(SYS_getpriority, PRIO_PROCESS, tid, 0, 0, 0, 0));
  if (got < 1) return;
  libc().syscall(SYS_setpriority, PRIO_PROCESS, tid, Math.min(19, 20 - got + steps), 0, 0, 0);
}

/** End both directions of a connection: a thread blocked reading it wakes up with its end. */
export function shutdownSocket(fd: number): void {
  libc().shutdown(fd, SHUT_RDWR);
}
