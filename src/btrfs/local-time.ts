/**
 * Seconds since the epoch as C's strftime("%FT%T%z") of localtime() prints them (glibc: the
 * year is not zero-padded, %z is ±hhmm), using the process's time zone (TZ) as Date does.
 * Returns undefined where localtime() fails: a year beyond a C int.
 */

const MAX_DATE_SECONDS = 8.64e12;
const INT_MAX = 2147483647;

let lastSeconds: number | bigint = Number.NaN;
let lastText: string | undefined;

export function formatLocalTime(seconds: number | bigint): string | undefined {
  if (seconds === lastSeconds) return lastText;
  const text = format(seconds);
  lastSeconds = seconds;
  lastText = text;
  return text;
}

function format(seconds: number | bigint): string | undefined {
  const clamped = typeof seconds === "bigint" || Math.abs(seconds) > MAX_DATE_SECONDS;
  const offsetProbe = clamped ? (seconds < 0 ? -MAX_DATE_SECONDS : MAX_DATE_SECONDS) : (seconds as number);
  const offsetMinutes = -new Date(offsetProbe * 1000).getTimezoneOffset();
  let days: number;
  let secondOfDay: number;
  if (typeof seconds === "bigint") {
    const local = seconds + BigInt(offsetMinutes * 60);
    let d = local / 86400n;
    let s = local % 86400n;
    if (s < 0n) {
      s += 86400n;
      d -= 1n;
    }
    days = Number(d);
    secondOfDay = Number(s);
  } else {
    const local = seconds + offsetMinutes * 60;
    days = Math.floor(local / 86400);
    secondOfDay = local - days * 86400;
  }
  const { year, month, day } = civilFromDays(days);
  if (year - 1900 > INT_MAX || year - 1900 < -INT_MAX - 1) return undefined;
  const hh = Math.floor(secondOfDay / 3600);
  const mm = Math.floor((secondOfDay % 3600) / 60);
  const ss = secondOfDay % 60;
  const sign = offsetMinutes < 0 ? "-" : "+";
  const off = Math.abs(offsetMinutes);
  return `${year}-${two(month)}-${two(day)}T${two(hh)}:${two(mm)}:${two(ss)}${sign}${two(Math.floor(off / 60))}${two(off % 60)}`;
}

function two(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** Proleptic Gregorian date of a day count from 1970-01-01 (H. Hinnant's civil_from_days). */
function civilFromDays(z: number): { year: number; month: number; day: number } {
  z += 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  return { year, month, day };
}
