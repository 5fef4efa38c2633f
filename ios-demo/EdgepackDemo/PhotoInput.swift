import UIKit

enum PhotoInput {
    /// The photo upright (orientation applied), on white, scaled to at most `maxSide` points: luminance
    /// row-major from the top row, 0 = black ... 1 = white.
    static func luminance(of image: UIImage, maxSide: CGFloat = 256) -> (values: [Float], width: Int, height: Int)? {
        guard image.size.width > 0, image.size.height > 0 else { return nil }
        let scale = min(1, maxSide / max(image.size.width, image.size.height))
        let size = CGSize(width: max(1, (image.size.width * scale).rounded()), height: max(1, (image.size.height * scale).rounded()))
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        let upright = UIGraphicsImageRenderer(size: size, format: format).image { context in
            UIColor.white.setFill()
            context.fill(CGRect(origin: .zero, size: size))
            image.draw(in: CGRect(origin: .zero, size: size))
        }
        guard let cgImage = upright.cgImage else { return nil }
        let width = cgImage.width, height = cgImage.height
        var gray = [UInt8](repeating: 0, count: width * height)
        let drawn: Bool = gray.withUnsafeMutableBytes { buffer in
            guard let context = CGContext(data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8,
                                          bytesPerRow: width, space: CGColorSpaceCreateDeviceGray(),
                                          bitmapInfo: CGImageAlphaInfo.none.rawValue) else { return false }
            context.draw(cgImage, in: CGRect(x: 0, y: 0, width: width, height: height))
            return true
        }
        guard drawn else { return nil }
        return (gray.map { Float($0) / 255 }, width, height)
    }

    /// What the model sees before resizing: ink dark on white, one pixel per cell (show it with .interpolation(.none)).
    static func gridImage(_ grid: [Float], preprocessing: ImagePreprocessing) -> UIImage? {
        var pixels = grid.map { UInt8(255 - min(255, max(0, Int(255 * $0 / Float(preprocessing.sourceMax))))) }
        let width = preprocessing.sourceWidth, height = preprocessing.sourceHeight
        let cgImage: CGImage? = pixels.withUnsafeMutableBytes { buffer in
            CGContext(data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8, bytesPerRow: width,
                      space: CGColorSpaceCreateDeviceGray(), bitmapInfo: CGImageAlphaInfo.none.rawValue)?.makeImage()
        }
        return cgImage.map { UIImage(cgImage: $0) }
    }
}
