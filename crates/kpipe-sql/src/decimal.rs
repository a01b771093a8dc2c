//! An exact DECIMAL value, as Java's BigDecimal holds one: an unscaled whole
//! number and a scale (how many of its digits are the fraction). ksqlDB caps
//! DECIMAL precision at 38 digits, which an i128 always holds.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal {
    unscaled: i128,
    scale: u32,
}

impl Decimal {
    pub(crate) fn new(unscaled: i128, scale: u32) -> Self {
        Decimal { unscaled, scale }
    }

    pub(crate) fn unscaled(&self) -> i128 {
        self.unscaled
    }

    pub(crate) fn scale(&self) -> u32 {
        self.scale
    }

    /// Decimal text (`-12.30`, `1.5e3`) with the scale its digits give it
    /// (`-12.30` has scale 2); None when it is not a number or too large.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i64>().ok()?),
            None => (text, 0),
        };
        let (negative, mantissa) = match mantissa.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.len() + fraction.len() == 0
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut unscaled: i128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            unscaled = unscaled
                .checked_mul(10)?
                .checked_add(i128::from(digit - b'0'))?;
        }
        let unscaled = if negative { -unscaled } else { unscaled };
        let scale = fraction.len() as i64 - exponent;
        if scale >= 0 {
            Some(Decimal::new(unscaled, u32::try_from(scale).ok()?))
        } else {
            // A negative scale (`1.5e3`) is spelled out as whole digits.
            Decimal::new(unscaled, 0).times_ten_to(u32::try_from(-scale).ok()?)
        }
    }

    /// The same value at `scale`, rounded half away from zero (BigDecimal's
    /// HALF_UP) when digits are dropped; None when it no longer fits.
    pub(crate) fn rescale(self, scale: u32) -> Option<Self> {
        if scale >= self.scale {
            return Decimal::new(self.unscaled, scale).times_ten_to(scale - self.scale);
        }
        let Some(divisor) = 10i128.checked_pow(self.scale - scale) else {
            // More dropped digits than an i128 has: nothing is left.
            return Some(Decimal::new(0, scale));
        };
        let (quotient, remainder) = (self.unscaled / divisor, self.unscaled % divisor);
        let away = remainder.unsigned_abs() >= divisor.unsigned_abs().div_ceil(2);
        let rounded = quotient + if away { self.unscaled.signum() } else { 0 };
        Some(Decimal::new(rounded, scale))
    }

    /// How many digits the unscaled value has (BigDecimal's precision: 0 has one).
    pub(crate) fn precision(&self) -> u32 {
        self.unscaled
            .unsigned_abs()
            .checked_ilog10()
            .map_or(1, |d| d + 1)
    }

    /// The nearest double, for rows that still hold DECIMALs as numbers.
    pub(crate) fn to_f64(self) -> f64 {
        self.to_string().parse().expect("decimal text is a float")
    }

    /// The unscaled value times 10^`power`, the scale unchanged.
    fn times_ten_to(self, power: u32) -> Option<Self> {
        let unscaled = 10i128
            .checked_pow(power)
            .and_then(|factor| self.unscaled.checked_mul(factor))?;
        Some(Decimal::new(unscaled, self.scale))
    }
}

/// With all of the scale's digits, as BigDecimal.toPlainString writes it:
/// `3.40`, `0.00`, `-0.05`.
impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.unscaled.unsigned_abs().to_string();
        let scale = self.scale as usize;
        // At least one digit before the point.
        let digits = format!("{digits:0>width$}", width = scale + 1);
        let (whole, fraction) = digits.split_at(digits.len() - scale);
        let sign = if self.unscaled < 0 { "-" } else { "" };
        if fraction.is_empty() {
            write!(f, "{sign}{whole}")
        } else {
            write!(f, "{sign}{whole}.{fraction}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str, scale: u32) -> String {
        Decimal::parse(s)
            .unwrap()
            .rescale(scale)
            .unwrap()
            .to_string()
    }

    #[test]
    fn text_keeps_its_own_scale_and_prints_every_digit_of_it() {
        assert_eq!(Decimal::parse("3.40"), Some(Decimal::new(340, 2)));
        assert_eq!(Decimal::parse("-12.3"), Some(Decimal::new(-123, 1)));
        assert_eq!(Decimal::parse("1.5e3"), Some(Decimal::new(1500, 0)));
        assert_eq!(Decimal::parse("1.005E-1"), Some(Decimal::new(1005, 4)));
        assert_eq!(Decimal::parse("+.5"), Some(Decimal::new(5, 1)));
        for bad in ["", ".", "-", "1.2.3", "e5", "1e", "abc", "1 "] {
            assert_eq!(Decimal::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Decimal::new(340, 2).to_string(), "3.40");
        assert_eq!(Decimal::new(0, 2).to_string(), "0.00");
        assert_eq!(Decimal::new(-5, 2).to_string(), "-0.05");
        assert_eq!(Decimal::new(123450, 5).to_string(), "1.23450");
        assert_eq!(Decimal::new(-7, 0).to_string(), "-7");
    }

    #[test]
    fn rescaling_pads_or_rounds_half_away_from_zero() {
        assert_eq!(text("10.3", 2), "10.30");
        assert_eq!(text("1.005", 2), "1.01", "exact, unlike 1.005 as a double");
        assert_eq!(text("-1.005", 2), "-1.01");
        assert_eq!(text("1.004", 2), "1.00");
        assert_eq!(text("-0.4", 0), "0");
        assert_eq!(
            text("12345678987654321.23456789876", 16),
            "12345678987654321.2345678987600000"
        );
        assert_eq!(
            Decimal::new(i128::MAX, 0).rescale(39),
            None,
            "overflow is not a value"
        );
        assert_eq!(
            Decimal::new(i128::MAX, 60).rescale(0),
            Some(Decimal::new(0, 0))
        );
    }

    #[test]
    fn precision_counts_the_unscaled_digits() {
        assert_eq!(Decimal::new(0, 2).precision(), 1);
        assert_eq!(Decimal::new(-12345, 2).precision(), 5);
        assert_eq!(Decimal::new(10i128.pow(37), 0).precision(), 38);
        assert_eq!(Decimal::new(340, 2).to_f64(), 3.4);
    }
}
