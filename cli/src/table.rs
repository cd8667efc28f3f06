//! Plain-text tables, aligned like `kubectl get`.

/// Renders `rows` under `headers`, columns separated by three spaces, the last column
/// left ragged.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < columns {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 3));
            } else {
                text.push_str(cell);
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["red".into(), "10.100.0.0/16".into(), "True".into()],
            vec!["green-long".into(), "10.200.0.0/16".into(), "False".into()],
        ];
        assert_eq!(
            render(&["NAME", "CIDR", "READY"], &rows),
            "NAME         CIDR            READY\n\
             red          10.100.0.0/16   True\n\
             green-long   10.200.0.0/16   False\n"
        );
    }
}
