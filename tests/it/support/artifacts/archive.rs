//! The bytes of packages, made here so no test needs a packaging tool: digests (SHA-1, SHA-256,
//! SHA-512, MD5 for Maven's `.md5`), gzip (stored deflate blocks: valid, uncompressed), ustar,
//! zip (stored entries), and from those an npm tarball, a wheel, a `.crate`, a jar and a nupkg
//! that the real clients unpack and accept.

use aws_lc_rs::digest;
use base64::Engine as _;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-1, hex (npm's `shasum`, Maven's `.sha1`).
pub fn sha1_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref())
}

/// SHA-256, hex (PEP 503's `#sha256=`, cargo's `cksum`, twine's `sha256_digest`).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha256(data))
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// SHA-512, hex (Maven's `.sha512`).
pub fn sha512_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA512, data).as_ref())
}

/// npm's `dist.integrity`: `sha512-` and the base64 SHA-512.
pub fn npm_integrity(data: &[u8]) -> String {
    let d = digest::digest(&digest::SHA512, data);
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

/// MD5, hex (Maven's `.md5`; aws-lc-rs has no MD5, RFC 1321 written out).
pub fn md5_hex(data: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (1..=64)
        .map(|i| (f64::from(i).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for block in msg.chunks(64) {
        let m: Vec<u32> = block
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for (i, (&s, &k)) in S.iter().zip(&k).enumerate() {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(s));
        }
        h = [
            h[0].wrapping_add(a),
            h[1].wrapping_add(b),
            h[2].wrapping_add(c),
            h[3].wrapping_add(d),
        ];
    }
    hex(&h.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
}

/// CRC-32 (IEEE), for gzip and zip.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` gzipped with stored (uncompressed) deflate blocks.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A ustar archive of regular files (names under 100 bytes).
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut header = [0u8; 512];
        let field = |h: &mut [u8; 512], at: usize, value: &[u8]| {
            h[at..at + value.len()].copy_from_slice(value);
        };
        field(&mut header, 0, name.as_bytes());
        field(&mut header, 100, b"0000644\0");
        field(&mut header, 108, b"0000000\0");
        field(&mut header, 116, b"0000000\0");
        field(
            &mut header,
            124,
            format!("{:011o}\0", data.len()).as_bytes(),
        );
        field(&mut header, 136, b"14000000000\0");
        field(&mut header, 148, b"        ");
        header[156] = b'0';
        field(&mut header, 257, b"ustar\0");
        field(&mut header, 263, b"00");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        field(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A zip archive of stored (uncompressed) files.
pub fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        // version 2.0, no flags, stored, 00:00 1980-01-01
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&[0, 0]);
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 3]); // made by: 2.0, Unix
        common(&mut central);
        central.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // comment, disk, internal attributes
        central.extend_from_slice(&(0o100_644u32 << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let n = (files.len() as u16).to_le_bytes();
    out.extend_from_slice(&n);
    out.extend_from_slice(&n);
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// An npm package tarball (`package/package.json`, `package/index.js`) for `name@version`.
pub fn npm_tarball(name: &str, version: &str) -> Vec<u8> {
    let manifest = serde_json::json!({"name": name, "version": version, "main": "index.js"});
    let index = format!("module.exports = {:?};\n", format!("{name}@{version}"));
    gzip(&tar(&[
        ("package/package.json", manifest.to_string().as_bytes()),
        ("package/index.js", index.as_bytes()),
    ]))
}

/// A pure-Python wheel `{name}-{version}-py3-none-any.whl` with module `{name}` whose
/// `VERSION` is `version`; returns (file name, bytes). `name` is a normalized project name
/// with no `-`.
pub fn wheel(name: &str, version: &str) -> (String, Vec<u8>) {
    let dist_info = format!("{name}-{version}.dist-info");
    let module = format!("{name}/__init__.py");
    let init = format!("VERSION = {version:?}\n");
    let metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
    let wheel =
        "Wheel-Version: 1.0\nGenerator: patless-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let entries = [
        (module, init.into_bytes()),
        (format!("{dist_info}/METADATA"), metadata.into_bytes()),
        (format!("{dist_info}/WHEEL"), wheel.as_bytes().to_vec()),
    ];
    let mut record = String::new();
    for (path, data) in &entries {
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(data));
        record.push_str(&format!("{path},sha256={hash},{}\n", data.len()));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    let record_path = format!("{dist_info}/RECORD");
    let mut files: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    files.push((record_path.as_str(), record.as_bytes()));
    (format!("{name}-{version}-py3-none-any.whl"), zip(&files))
}

/// A `.crate` (gzipped tar of `{name}-{version}/`, a library) for `name` `version`.
pub fn crate_file(name: &str, version: &str) -> Vec<u8> {
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\n\n[lib]\npath = \"src/lib.rs\"\n"
    );
    let lib = format!("pub const VERSION: &str = \"{version}\";\n");
    gzip(&tar(&[
        (
            format!("{name}-{version}/Cargo.toml").as_str(),
            manifest.as_bytes(),
        ),
        (
            format!("{name}-{version}/src/lib.rs").as_str(),
            lib.as_bytes(),
        ),
    ]))
}

/// A jar (zip with a manifest) standing for a Maven artifact.
pub fn jar(artifact: &str, version: &str) -> Vec<u8> {
    let manifest = format!(
        "Manifest-Version: 1.0\r\nImplementation-Title: {artifact}\r\nImplementation-Version: {version}\r\n\r\n"
    );
    zip(&[("META-INF/MANIFEST.MF", manifest.as_bytes())])
}

/// A POM for `group:artifact:version` (jar packaging, no dependencies).
pub fn pom(group: &str, artifact: &str, version: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<project xmlns=\"http://maven.apache.org/POM/4.0.0\">\n  <modelVersion>4.0.0</modelVersion>\n  <groupId>{group}</groupId>\n  <artifactId>{artifact}</artifactId>\n  <version>{version}</version>\n  <packaging>jar</packaging>\n</project>\n"
    )
}

/// A nupkg (zip with a `.nuspec`) for `id` `version`.
pub fn nupkg(id: &str, version: &str) -> Vec<u8> {
    zip(&[(
        format!("{id}.nuspec").as_str(),
        nuspec(id, version).as_bytes(),
    )])
}

/// The `.nuspec` of [`nupkg`].
pub fn nuspec(id: &str, version: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<package xmlns=\"http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd\">\n  <metadata>\n    <id>{id}</id>\n    <version>{version}</version>\n    <authors>patless tests</authors>\n    <description>{id}</description>\n  </metadata>\n</package>\n"
    )
}
