//! RFC 3339 timestamps for JSON bodies (liveness, accounts) without a date-time dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats a time as RFC 3339 UTC with milliseconds (`2026-11-22T12:00:00.000Z`).
pub fn rfc3339(time: SystemTime) -> String {
    let mut out = [0u8; MICROS_LEN];
    let len = write_rfc3339(&mut out, time, false);
    String::from_utf8_lossy(&out[..len]).into_owned()
}

/// The longest timestamp [`write_rfc3339`] makes (`2026-11-22T12:00:00.000000Z`).
pub const MICROS_LEN: usize = 27;

/// Writes `time` as RFC 3339 UTC into `out`, with milliseconds or (`micros`) microseconds,
/// and returns its length. Digits are written directly: it runs for every log line and every
/// liveness probe, where `format!` cost more than the rest of the line's fields.
pub fn write_rfc3339(out: &mut [u8; MICROS_LEN], time: SystemTime, micros: bool) -> usize {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, rem) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u64;
    let mut put = |at: usize, value: u64, width: usize| {
        let mut value = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, rem / 3600, 2);
    put(14, (rem % 3600) / 60, 2);
    put(17, rem % 60, 2);
    let (fraction, digits) = if micros {
        (u64::from(since_epoch.subsec_micros()), 6)
    } else {
        (u64::from(since_epoch.subsec_millis()), 3)
    };
    put(20, fraction, digits);
    for (at, byte) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = byte;
    }
    out[20 + digits] = b'Z';
    21 + digits
}

/// [`rfc3339`] of a time given as Unix milliseconds (as the services store times).
pub fn rfc3339_millis(unix_ms: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_780_800_123);
        assert_eq!(rfc3339(t), "2026-11-27T12:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn micros_are_written_in_full() {
        let mut out = [0u8; MICROS_LEN];
        let t = UNIX_EPOCH + Duration::from_micros(1_795_780_800_000_042);
        let len = write_rfc3339(&mut out, t, true);
        assert_eq!(&out[..len], b"2026-11-27T12:00:00.000042Z");
        let end_of_year = UNIX_EPOCH + Duration::from_micros(1_798_761_599_999_999);
        let len = write_rfc3339(&mut out, end_of_year, true);
        assert_eq!(&out[..len], b"2026-12-31T23:59:59.999999Z");
    }
}
