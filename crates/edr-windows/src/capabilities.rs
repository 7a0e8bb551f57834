//! The capability manifest: what this sensor build can collect and do.

#[cfg(test)]
mod tests {
    #[test]
    fn placeholder_runs() {
        assert_eq!(
            std::env::consts::OS,
            if cfg!(windows) { "windows" } else { "linux" }
        );
    }
}
