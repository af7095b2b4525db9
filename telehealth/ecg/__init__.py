"""ECG as a service: formats in (DICOM, HL7 aECG, SCP-ECG, Philips and GE XML), calibrated
samples, measurements and the paper rendering out. The logic is in `telehealth.ecg.service`."""
