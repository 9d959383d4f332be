//! Five-field cron expressions (`minute hour day-of-month month
//! day-of-week`, UTC) for a repository's `schedule`: `*`, numbers, lists
//! `a,b`, ranges `a-b` and steps `*/n`, `a-b/n`. Day-of-week 0 and 7 are
//! Sunday. As in cron, when both day fields are restricted a day matching
//! either one matches. Pure.

/// A parsed expression: for each field, which values match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minute: Vec<bool>,
    hour: Vec<bool>,
    dom: Vec<bool>,
    month: Vec<bool>,
    dow: Vec<bool>,
    dom_any: bool,
    dow_any: bool,
}

/// One UTC minute, broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    pub minute: u32,
    pub hour: u32,
    pub day: u32,
    pub month: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

impl Minute {
    /// The minute holding `unix_secs`.
    pub fn of_unix(unix_secs: i64) -> Minute {
        let days = unix_secs.div_euclid(86_400);
        let rem = unix_secs.rem_euclid(86_400);
        let (_, month, day) = crate::store::state::civil_from_days(days);
        Minute {
            minute: (rem % 3600 / 60) as u32,
            hour: (rem / 3600) as u32,
            day,
            month,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [mi, h, dom, mo, dow] = fields.as_slice() else {
            return Err(format!(
                "a cron expression has five fields (minute hour day month weekday), this has {}",
                fields.len()
            ));
        };
        let mut dow_set = field(dow, 0, 7, "weekday")?;
        // 7 is Sunday too.
        if dow_set[7] {
            dow_set[0] = true;
        }
        Ok(Cron {
            minute: field(mi, 0, 59, "minute")?,
            hour: field(h, 0, 23, "hour")?,
            dom: field(dom, 1, 31, "day")?,
            month: field(mo, 1, 12, "month")?,
            dow: dow_set,
            dom_any: dom.starts_with('*'),
            dow_any: dow.starts_with('*'),
        })
    }

    pub fn matches(&self, t: Minute) -> bool {
        let day = match (self.dom_any, self.dow_any) {
            (false, false) => self.dom[t.day as usize] || self.dow[t.weekday as usize],
            _ => self.dom[t.day as usize] && self.dow[t.weekday as usize],
        };
        self.minute[t.minute as usize]
            && self.hour[t.hour as usize]
            && self.month[t.month as usize]
            && day
    }
}

/// The values of one field, indexed by value (0..=max).
fn field(text: &str, min: u32, max: u32, name: &str) -> Result<Vec<bool>, String> {
    let mut set = vec![false; max as usize + 1];
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}: step `{s}` is not a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let num = |s: &str| -> Result<u32, String> {
            s.parse()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{name}: `{s}` is not a number from {min} to {max}"))
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a)?, num(b)?)
        } else {
            let v = num(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("{name}: range `{range}` runs backwards"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            set[v as usize] = true;
        }
    }
    Ok(set)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> Minute {
        Minute {
            minute,
            hour,
            day,
            month,
            weekday,
        }
    }

    #[test]
    fn nightly() {
        let c = Cron::parse("0 2 * * *").unwrap();
        assert!(c.matches(at(0, 2, 3, 12, 4)));
        assert!(!c.matches(at(1, 2, 3, 12, 4)));
        assert!(!c.matches(at(0, 3, 3, 12, 4)));
    }

    #[test]
    fn lists_ranges_steps_and_sunday_as_seven() {
        let c = Cron::parse("*/15 8-18/2 * * 1-5").unwrap();
        assert!(c.matches(at(45, 10, 1, 1, 3)));
        assert!(!c.matches(at(45, 9, 1, 1, 3)));
        assert!(!c.matches(at(0, 8, 1, 1, 6)));
        let sun = Cron::parse("30 6 * * 7").unwrap();
        assert!(sun.matches(at(30, 6, 7, 6, 0)));
        let list = Cron::parse("5,10 0 1 1,7 *").unwrap();
        assert!(list.matches(at(10, 0, 1, 7, 2)));
        assert!(!list.matches(at(10, 0, 2, 7, 2)));
    }

    #[test]
    fn both_day_fields_match_either() {
        let c = Cron::parse("0 0 13 * 5").unwrap();
        assert!(c.matches(at(0, 0, 13, 2, 1)), "the 13th");
        assert!(c.matches(at(0, 0, 6, 2, 5)), "a Friday");
        assert!(!c.matches(at(0, 0, 6, 2, 4)));
    }

    #[test]
    fn bad_expressions_say_why() {
        for (e, why) in [
            ("0 2 * *", "five fields"),
            ("60 2 * * *", "minute"),
            ("0 24 * * *", "hour"),
            ("0 2 0 * *", "day"),
            ("*/0 2 * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "minute"),
        ] {
            let err = Cron::parse(e).unwrap_err();
            assert!(err.contains(why), "{e}: {err}");
        }
    }

    #[test]
    fn unix_seconds_to_minutes() {
        // 2026-12-03T09:12:00Z, a Thursday.
        let m = Minute::of_unix(1_796_289_120);
        assert_eq!(m, at(12, 9, 3, 12, 4));
        assert_eq!(Minute::of_unix(0), at(0, 0, 1, 1, 4));
    }
}
