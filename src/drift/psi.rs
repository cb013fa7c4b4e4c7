//! The population stability index of two histograms.

use super::FLOOR;

/// Computes PSI between two histograms of counts over the same bins.
///
/// Each bin's share is floored at [`FLOOR`] (0.0001) before the logarithm,
/// so a bin that is empty on one side adds a large but finite term (for a
/// bin holding half the live values and none of the reference:
/// (0.5 − 0.0001) · ln(0.5 / 0.0001) ≈ 4.26) and the result is never
/// infinite or NaN. With no reference or no live values (a feature absent
/// from the reference, or nothing seen yet) there is nothing to compare and
/// the PSI is 0. Small samples are not corrected: one reference value and
/// one live value in different bins give about 18.4.
pub fn psi(reference: &[u64], live: &[u64]) -> f64 {
    let ref_total: u64 = reference.iter().sum();
    let live_total: u64 = live.iter().sum();
    if ref_total == 0 || live_total == 0 {
        return 0.0;
    }
    reference
        .iter()
        .zip(live)
        .map(|(&r, &l)| {
            let e = (r as f64 / ref_total as f64).max(FLOOR);
            let a = (l as f64 / live_total as f64).max(FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_have_zero_psi_and_shifted_ones_do_not() {
        assert!(psi(&[10, 20, 30], &[1, 2, 3]).abs() < 1e-12);
        // 50/50 vs 90/10: (0.9-0.5)ln(1.8) + (0.1-0.5)ln(0.2) = 0.2351 + 0.6438
        let v = psi(&[50, 50], &[90, 10]);
        assert!((v - 0.878_9).abs() < 1e-3, "{v}");
        assert_eq!(psi(&[0, 0], &[1, 1]), 0.0);
    }

    #[test]
    fn psi_matches_values_worked_out_by_hand() {
        // Four bins, 40/30/20/10% against 10/20/30/40%:
        // (0.1-0.4)ln(0.25) + (0.2-0.3)ln(2/3) + (0.3-0.2)ln(1.5) + (0.4-0.1)ln(4)
        // = 0.415888 + 0.040547 + 0.040547 + 0.415888 = 0.912870
        let v = psi(&[40, 30, 20, 10], &[10, 20, 30, 40]);
        assert!((v - 0.912_870).abs() < 1e-6, "{v}");
        // Symmetric: swapping reference and live gives the same index.
        let w = psi(&[10, 20, 30, 40], &[40, 30, 20, 10]);
        assert!((v - w).abs() < 1e-12);
    }

    #[test]
    fn an_empty_bin_counts_with_the_floor_and_stays_finite() {
        // Reference all in bin 0; live split evenly:
        // bin 0: (0.5-1)ln(0.5) = 0.346574
        // bin 1: (0.5-0.0001)ln(0.5/0.0001) = 0.4999 * 8.517193 = 4.257745
        let v = psi(&[100, 0], &[50, 50]);
        assert!((v - 4.604_319).abs() < 1e-5, "{v}");
        assert!(v.is_finite());
        let all_moved = psi(&[100, 0], &[0, 100]);
        assert!(all_moved.is_finite() && all_moved > 10.0, "{all_moved}");
    }

    #[test]
    fn tiny_samples_give_finite_large_values() {
        // One value each, in different bins: 2 * 0.9999 * ln(10000) = 18.4188
        let v = psi(&[1, 0, 0], &[0, 0, 1]);
        assert!((v - 18.418_8).abs() < 1e-3, "{v}");
        assert_eq!(psi(&[1], &[1]), 0.0);
    }

    #[test]
    fn a_feature_absent_from_the_reference_reads_zero() {
        assert_eq!(psi(&[0, 0, 0], &[3, 1, 0]), 0.0);
        assert_eq!(psi(&[2, 2], &[0, 0]), 0.0);
        assert_eq!(psi(&[], &[]), 0.0);
    }
}
