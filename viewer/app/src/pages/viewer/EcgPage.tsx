// One ECG opened on its own (/app/ecg/:sopUid): the viewer with the whole page to itself.
import { EcgViewer } from "../../viewers/ecg/EcgViewer";

export function EcgPage(props: { sopUid?: string }) {
  if (!props.sopUid) return null;
  return (
    <section class="ecg-page">
      <EcgViewer sopInstanceUid={decodeURIComponent(props.sopUid)} />
    </section>
  );
}
