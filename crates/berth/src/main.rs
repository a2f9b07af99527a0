static VW: &[u8] = include_bytes!(env!("BERTH_VW_PATH"));
fn main() { println!("{}", VW.len()); }
