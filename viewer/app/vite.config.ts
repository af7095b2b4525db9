// The web app is served by the hub under /app/ (telehealth/webapp.py). Built files carry a
// 16-hex content hash so the hub can cache them for a year; index.html is revalidated.
import preact from "@preact/preset-vite";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/app/",
  plugins: [preact()],
  build: {
    outDir: "dist",
    target: "es2022",
    sourcemap: false,
    // One chunk per page keeps the clinic desk small on a township link.
    rollupOptions: {
      output: {
        hashCharacters: "hex",
        entryFileNames: "assets/[name].[hash:16].js",
        chunkFileNames: "assets/[name].[hash:16].js",
        assetFileNames: "assets/[name].[hash:16][extname]",
      },
    },
  },
  server: {
    // `npm run dev`: API calls go to a hub started with scripts/serve.sh.
    proxy: {
      "/api": { target: "http://127.0.0.1:8042", ws: true },
      "/dicomweb": "http://127.0.0.1:8042",
    },
  },
});
