fn main() {
    println!("pgsat");
}
